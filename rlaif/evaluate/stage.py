"""The evaluate stage: does round K's policy beat the SFT model on prompts it never trained on?

    rlaif evaluate --config configs/quickstart.yaml round=1

1. Answers: the SFT model answers the held-out prompts once per run (RUN_DIR/eval-sft/), round
   K's policy (its base plus its adapter) answers them in RUN_DIR/round-K/eval/answers/; both
   through the generate stage, with the generate settings except n=1 and evaluate.temperature
   (greedy by default). Both are resumable shards, as in generate. A held-out set with `turns` rows
   is played out by each model on its own (rlaif/generate/turns.py: the SFT model's conversation holds
   the SFT model's earlier answers, the policy's the policy's), the played turns under each side's
   answers folder (turns/turn-J/), all of a side's passes on one loaded model.
2. Verdicts: the judge compares policy vs SFT answers pairwise in both orders (or, with
   evaluate.mode=score, judges each alone: a rubric score, the weighted P(yes) of judge.checklist
   when judge.mode=checklist, or a reward model's reward) through the round's ledger, so a rerun
   pays for nothing twice.
   Identical answers are ties and are never sent. Played conversations are compared at every user
   turn, each answer in its own conversation (MT-Bench's pairwise multi-turn judge: pairwise-turns-v1);
   each conversation's last turn is the headline.
3. eval/eval.json: win rate with a bootstrap interval, length-controlled win rate (its length slope
   from two of round K's candidates per training prompt, judged the same way: lc_anchor.py; those
   comparisons in eval/anchor-outcomes.parquet), lengths,
   judge health, implicit-reward accuracy on held-out pairs, and the same against round K-1's
   policy. eval/outcomes.parquet holds one row per compared prompt (metrics.py has the schema); with
   played conversations eval.json's `per_turn` holds the win rate at each user turn, and
   eval/outcomes-per-turn.parquet its rows.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import BudgetExceeded, JudgeIncomplete, UserError
from rlaif.evaluate import lc_anchor as LA
from rlaif.evaluate import metrics as M
from rlaif.io import PAIRS_SCHEMA, read_parquet_checked, write_json, write_parquet
from rlaif.prompts import prompt_args, read_prompts
from rlaif.judge import templates as T
from rlaif.judge.pairs.compare import checklist_weights
from rlaif.judge.session import JudgeSession, judge_label, judge_weights, same_text
from rlaif.judge.candidates import read_candidates
from rlaif.train.policy import adapter_dir, policy_base

EVAL_JSON = Path("eval") / "eval.json"


def sft_dir(cfg: RunConfig) -> Path:
    """SFT answers to the held-out prompts: the same for every round, so made once per run."""
    return Path(cfg.run_dir) / "eval-sft"


def answers_dir(cfg: RunConfig, k: int) -> Path:
    return cfg.round_dir(k) / "eval" / "answers"


def heldout_prompts(cfg: RunConfig) -> pl.DataFrame:
    e = cfg.evaluate
    if not e.prompts:
        raise UserError("evaluate.prompts: not set; name a held-out prompts file (never used for training), "
                        "e.g. evaluate.prompts=configs/prompts/quickstart-heldout.jsonl")
    prompts = read_prompts(*prompt_args(cfg, heldout=True))
    if e.n_prompts:
        prompts = prompts.head(e.n_prompts)
    trained = {json.dumps(m, sort_keys=True) for m in read_prompts(*prompt_args(cfg))["messages"].to_list()}
    leaked = [pid for pid, m in zip(prompts["prompt_id"], prompts["messages"].to_list())
              if json.dumps(m, sort_keys=True) in trained]
    if leaked:
        raise UserError(f"{e.prompts}: {len(leaked)} held-out prompt(s) also appear in the training prompts "
                        f"{cfg.prompts} (first: prompt_id {leaked[0]!r}); a win rate on trained prompts "
                        "measures memory, not improvement: remove them from one file")
    return prompts


def answers(cfg: RunConfig, prompts: pl.DataFrame, k: int | None) -> pl.DataFrame:
    """Round k's policy answers (k=None: the SFT model's), generated if not there yet."""
    from rlaif.generate import sample_prompts

    e = cfg.evaluate
    upd = {"n": 1, "temperature": e.temperature, "max_tokens": e.max_tokens or cfg.generate.max_tokens,
           "max_prompts": None, "model": None, "adapter": None,
           # sample_prompts runs in this process: the answers are few; worker settings do not apply
           "data_parallel_size": 1, "worker": None}
    if k is not None:
        adapter = adapter_dir(cfg, k)
        # The train manifest, written last, not adapter_config.json, which save_model writes before the weights
        if not (adapter.parent / "train.manifest.json").exists():
            raise UserError(f"{adapter}: round {k} has no trained adapter ({adapter.parent / 'train.manifest.json'} "
                            f"missing); run `rlaif train round={k}` first")
        upd.update(model=policy_base(cfg, k), adapter=str(adapter.resolve()))
    sub = cfg.model_copy(update={"generate": cfg.generate.model_copy(update=upd), "round": 0 if k is None else k})
    out = sft_dir(cfg) if k is None else answers_dir(cfg, k)
    sample_prompts(sub, prompts, out, tag="eval-sft" if k is None else f"eval-r{k}",
                   desc="evaluate: SFT answers" if k is None else f"evaluate: round {k} answers")
    return read_candidates(out)


def matchups(policy: pl.DataFrame, other: pl.DataFrame) -> pl.DataFrame:
    """One row per held-out prompt both sides answered: ids, texts and whether the texts are the same."""
    cols = ["prompt_id", "candidate_id", "response", "messages"]
    m = policy.select(cols).join(other.select(cols[:3]), on="prompt_id", suffix="_o")
    return m.select("prompt_id", "messages", policy_id="candidate_id", sft_id="candidate_id_o",
                    policy_text="response", sft_text="response_o").with_columns(
        identical=pl.struct("policy_text", "sft_text").map_elements(
            lambda r: same_text(r["policy_text"], r["sft_text"]), return_dtype=pl.Boolean)).sort("prompt_id")


def played(out: Path, final: pl.DataFrame, prompts: pl.DataFrame) -> pl.DataFrame:
    """Every answer of one side's played conversations with its user turn: turns 1..T-1 from the side's
    out/turns/turn-J/ (rlaif/generate/turns.py), turn T from its final answers; conversations that were
    not played to the end (too long for the model) are left out."""
    last = dict(zip(prompts["prompt_id"].to_list(), prompts["turns"].list.len().fill_null(1).to_list()))
    parts = [final.with_columns(turn=pl.col("prompt_id").replace_strict(last, return_dtype=pl.Int64),
                                final=pl.lit(True))]
    for j in range(1, max(last.values(), default=1)):
        if (out / "turns" / f"turn-{j}" / "candidates.manifest.json").exists():
            parts.append(read_candidates(out / "turns" / f"turn-{j}").with_columns(turn=pl.lit(j, pl.Int64),
                                                                                   final=pl.lit(False)))
    cols = ["prompt_id", "turn", "final", "candidate_id", "messages", "response", "num_tokens"]
    return pl.concat([p.select(cols) for p in parts]).filter(pl.col("prompt_id").is_in(final["prompt_id"].implode()))


def turn_matchups(policy: pl.DataFrame, other: pl.DataFrame) -> pl.DataFrame:
    """matchups() per user turn of played conversations (played()): each side's own conversation up to the
    turn (messages, sft_messages) and its answer there. Identical means the whole conversations are."""
    cols = ["prompt_id", "turn", "final", "candidate_id", "messages", "response"]
    m = policy.select(cols).join(other.select(cols[:2] + cols[3:]), on=["prompt_id", "turn"], suffix="_o")

    def same(r) -> bool:
        return same_text(T.conversation([*r["messages"], {"role": "assistant", "content": r["policy_text"]}]),
                         T.conversation([*r["sft_messages"], {"role": "assistant", "content": r["sft_text"]}]))

    return m.select("prompt_id", "turn", "final", "messages", sft_messages="messages_o", policy_id="candidate_id",
                    sft_id="candidate_id_o", policy_text="response", sft_text="response_o").with_columns(
        identical=pl.struct("messages", "sft_messages", "policy_text", "sft_text").map_elements(
            same, return_dtype=pl.Boolean)).sort("prompt_id", "turn")


def plan_calls(cfg: RunConfig, js: JudgeSession, m: pl.DataFrame) -> list:
    sent = m.filter(~pl.col("identical"))
    calls, specs = [], {}
    for r in sent.iter_rows(named=True):
        a, b = (r["policy_id"], r["policy_text"]), (r["sft_id"], r["sft_text"])
        if "turn" in m.columns:  # played conversations: each answer in its own conversation
            calls += turn_calls(cfg, js, r, specs)
        elif cfg.evaluate.mode == "pairwise":
            calls += js.pairwise(r["prompt_id"], r["messages"], a, b)
        else:
            calls += js.single(r["prompt_id"], r["messages"], a) + js.single(r["prompt_id"], r["messages"], b)
    return calls


def turn_calls(cfg: RunConfig, js: JudgeSession, r: dict, specs: dict) -> list:
    """One matchup at user turn r["turn"]: pairwise, both conversations shown to the judge, told which turn
    to compare (templates.turn_spec); score, each answer scored in its own conversation (the earlier turns
    its history, rlaif/judge/templates.py marks the judged turn)."""
    mine, theirs = r["messages"], r["sft_messages"]
    if cfg.evaluate.mode != "pairwise":
        return (js.single(r["prompt_id"], mine, (r["policy_id"], r["policy_text"]))
                + js.single(r["prompt_id"], theirs, (r["sft_id"], r["sft_text"])))
    spec = specs.get(r["turn"]) or specs.setdefault(r["turn"], T.turn_spec(js.spec, r["turn"]))
    asked = [x for x in mine if x["role"] != "assistant"]  # what both were asked: the user's turns
    return js.pairwise(r["prompt_id"], asked,
                       (r["policy_id"], T.turns_text([*mine, {"role": "assistant", "content": r["policy_text"]}])),
                       (r["sft_id"], T.turns_text([*theirs, {"role": "assistant", "content": r["sft_text"]}])), spec)


def judged(cfg: RunConfig, m: pl.DataFrame, judgments: pl.DataFrame, tokens: dict) -> pl.DataFrame:
    """Outcome rows of the matchups that were sent, as evaluate.mode reads verdicts."""
    if cfg.evaluate.mode == "pairwise":
        out = M.outcomes(judgments, m["policy_id"], tokens).select(list(M.OUTCOME_SCHEMA))
        return out.select([pl.col(k).cast(v) for k, v in M.OUTCOME_SCHEMA.items()])
    weights = checklist_weights(cfg.judge)  # judge.mode=checklist: the filter's weights, one map everywhere
    return M.score_outcomes(judgments, m.filter(~pl.col("identical")), tokens, weights)


def length_anchor(cfg: RunConfig) -> tuple[pl.DataFrame | None, str, str | None]:
    """(matchups, source, why none): two complete answers of the model that wrote round K's
    candidates, for up to evaluate.length_anchor_prompts training prompts, judged as evaluate judges
    (rlaif/evaluate/lc_anchor.py says why). A judge stage that made the same call made it free."""
    from rlaif.judge.candidates import split_inputs

    k, n = cfg.round, cfg.evaluate.length_anchor_prompts
    try:
        cands, _ = split_inputs(read_candidates(cfg.round_dir()), cfg.judge)
    except UserError:
        return None, f"round {k} candidates", f"round {k} has no finished candidates to compare with each other"
    m = LA.anchor_matchups(cands, n, same_text)
    model = cands["model"][0] + (" + adapter" if cands["adapter"][0] else "") if cands.height else "-"
    source = f"round {k} candidates ({model}): two complete answers per prompt, judged {cfg.evaluate.mode}"
    if n == 0:
        return None, source, "evaluate.length_anchor_prompts=0"
    if m.is_empty():  # truncated answers are never anchors: cut off is worse for another reason than length
        cut = int((cands["finish_reason"] != "stop").sum()) if cands.height else 0
        return None, source, (f"round {k} has no prompt with two different complete candidates "
                              f"({cut} of {cands.height} hit max_tokens)")
    return m, source, None


def compare(cfg: RunConfig, m: pl.DataFrame, judgments: pl.DataFrame, tokens: dict,
            anchor: LA.Anchor | None = None) -> tuple[pl.DataFrame, dict]:
    """Outcome rows (judged + identical ties) and their summary; LC's slope from `anchor`."""
    ties = M.tie_outcomes(m.filter(pl.col("identical")), tokens)
    if cfg.evaluate.mode != "pairwise":
        ties = ties.with_columns(score_policy=pl.lit(None, pl.Float64), score_sft=pl.lit(None, pl.Float64))
    out = pl.concat([judged(cfg, m, judgments, tokens), ties]).sort("prompt_id")
    res = M.summarize_outcomes(out, [tokens.get(i) for i in m["policy_id"]], [tokens.get(i) for i in m["sft_id"]],
                               cfg.evaluate.n_boot, cfg.seed, anchor)
    res.update(n_prompts=m.height, n_identical=ties.height,
               n_judged_pairs=m.height - ties.height,
               n_excluded=m.height - out.height,  # an invalid verdict in either order, or no valid score
               position_consistency=M.position_consistency(judgments) if cfg.evaluate.mode == "pairwise" else None,
               invalid_rate=M.invalid_rate(judgments, single=cfg.evaluate.mode == "score"),
               judge_cost_usd=float(judgments["cost_usd"].sum()) if judgments.height else 0.0)
    return out, res


def per_turn(cfg: RunConfig, m: pl.DataFrame, judgments: pl.DataFrame, tokens: dict) -> tuple[pl.DataFrame, list]:
    """Outcome rows at every user turn of the played conversations (a `turn` column first) and eval.json's
    `per_turn`: MT-Bench reports its turns apart (Zheng et al. 2023, arXiv 2306.05685, sec. 4)."""
    ties = M.tie_outcomes(m.filter(pl.col("identical")), tokens)
    out = pl.concat([judged(cfg, m, judgments, tokens).select(list(M.OUTCOME_SCHEMA)), ties])
    out = out.join(m.select("policy_id", "turn"), on="policy_id").select("turn", *M.OUTCOME_SCHEMA)
    out = out.sort("turn", "prompt_id")
    return out, M.per_turn(out, m, tokens, cfg.evaluate.n_boot, cfg.seed)


def judge_after(cfg: RunConfig) -> int:
    """Under judge.model=policy, whose policy judges the evaluation: the SFT model (-1) unless
    evaluate.judge_policy asks for round k's own policy, which favours itself (a judge prefers what it
    would have written: Zheng et al. 2023, "Judging LLM-as-a-Judge", self-enhancement bias)."""
    return cfg.round if cfg.judge.model == "policy" and cfg.evaluate.judge_policy else -1


def judge(cfg: RunConfig, groups: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Send every group's missing calls through the round's ledger; judgments per group."""
    with JudgeSession(cfg, cfg.judge.ledger or cfg.round_dir() / "judge-ledger.sqlite", judge_after(cfg)) as js:
        plans = {name: plan_calls(cfg, js, m) for name, m in groups.items()}
        js.send([c for p in plans.values() for c in p], f"evaluate: judge ({cfg.evaluate.mode})")
        out = {name: js.results(p) for name, p in plans.items()}
        runner = js.runner
    pending = sum(len({c.key for c in p}) - out[n]["key"].n_unique() for n, p in plans.items())
    if runner.stopped:
        raise BudgetExceeded(f"evaluate stopped: {runner.stopped}; {pending} calls pending. Rerun with a higher "
                             "cap to continue: finished calls are never paid again")
    if pending:
        raise JudgeIncomplete(f"evaluate: {pending} judge calls got no reply after all retries "
                              f"(last error: {runner.last_error}); rerun to retry only those")
    return out


def reward_accuracy(cfg: RunConfig, k: int) -> dict | None:
    """DPO's implicit reward beta * (log pi(y|x) - log ref(y|x)) on held-out pairs: the share where
    chosen outranks rejected (Rafailov et al. 2023, eq. 5; strict, as TRL's rewards/accuracies).
    The reference is the adapter's base with the adapter off, which is DPO's reference under both
    train.reference settings (see rlaif.train.policy)."""
    path = cfg.evaluate.pairs
    if not path:
        return None
    if not Path(path).exists():
        raise UserError(f"evaluate.pairs {path}: file not found")
    pairs = read_parquet_checked(Path(path), PAIRS_SCHEMA, "pairs").head(cfg.evaluate.max_pairs)
    if pairs.is_empty():
        return None
    import torch
    from peft import PeftModel
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.generate.stage import render
    from rlaif.models import default_dtype, use_chat_template

    base = policy_base(cfg, k)
    tok = use_chat_template(AutoTokenizer.from_pretrained(base), cfg)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=default_dtype()),
                                      str(adapter_dir(cfg, k))).eval()

    def logp(chat: list[dict], response: str) -> tuple[float, float]:
        prompt = render(tok, chat)
        full = list(tok.apply_chat_template(chat + [{"role": "assistant", "content": response}], tokenize=True,
                                            return_dict=True)["input_ids"])[:cfg.train.max_length]
        n = len(prompt) if full[:len(prompt)] == prompt else 0
        if n == 0 or n >= len(full):  # template does not extend the prompt, or no room for the response
            raise UserError(f"{path}: pair for prompt cannot be scored within train.max_length={cfg.train.max_length}")
        ids = torch.tensor([full])
        res = []
        for on in (True, False):
            with torch.no_grad():
                if on:
                    logits = model(input_ids=ids).logits
                else:
                    with model.disable_adapter():
                        logits = model(input_ids=ids).logits
            lp = torch.log_softmax(logits[0, n - 1:-1].float(), -1).gather(1, ids[0, n:, None]).sum()
            res.append(float(lp))
        return res[0], res[1]

    c_ratio, r_ratio = [], []
    for r in tqdm(pairs.iter_rows(named=True), total=pairs.height, desc="evaluate: held-out pairs", unit="pair"):
        chat = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
        (cp, cr), (rp, rr) = logp(chat, r["chosen"]), logp(chat, r["rejected"])
        c_ratio.append(cp - cr)
        r_ratio.append(rp - rr)
    beta = cfg.train.beta
    margins = [beta * (c - r) for c, r in zip(c_ratio, r_ratio)]
    return {"reward_accuracy": M.implicit_reward_accuracy(c_ratio, r_ratio, beta),
            "reward_margin_mean": sum(margins) / len(margins), "n_reward_pairs": len(margins)}


def run(cfg: RunConfig) -> Path:
    k, t0 = cfg.round, time.perf_counter()
    edir = cfg.round_dir() / "eval"
    prompts = heldout_prompts(cfg)
    model, adapter = judge_weights(cfg, judge_after(cfg))  # a missing judge is one line before any answer
    sft = answers(cfg, prompts, None)
    pol = answers(cfg, prompts, k)
    turned = "turns" in prompts.columns and (prompts["turns"].list.len().max() or 0) > 1  # generate plays them
    if turned:  # every turn's answers, each side's own conversation; the last turn is the headline
        sft, pol = played(sft_dir(cfg), sft, prompts), played(answers_dir(cfg, k), pol, prompts)
        every = turn_matchups(pol, sft)
        groups = {"sft": every.filter(pl.col("final")), "turns": every.filter(~pl.col("final"))}
    else:
        groups = {"sft": matchups(pol, sft)}
    from rlaif.evaluate import checks as CK  # the user's checks: measured without the judge, before paying it

    checks = CK.measure(cfg, groups["sft"], edir / "checks.parquet")
    prev = None
    if cfg.evaluate.vs_previous and k > 0:
        prev = answers(cfg, prompts, k - 1)
        if turned:  # the last turns only: per-turn figures are against SFT
            prev = played(answers_dir(cfg, k - 1), prev, prompts)
            groups["previous"] = turn_matchups(pol, prev).filter(pl.col("final"))
        else:
            groups["previous"] = matchups(pol, prev)
    t_gen = time.perf_counter() - t0
    tokens = dict(zip(pl.concat([pol, sft] + ([prev] if prev is not None else []))["candidate_id"],
                      pl.concat([pol, sft] + ([prev] if prev is not None else []))["num_tokens"]))
    anchor_m, source, why = length_anchor(cfg)
    if anchor_m is not None:
        groups["anchor"] = anchor_m
        tokens.update(zip(anchor_m["policy_id"], anchor_m["policy_tokens"]))
        tokens.update(zip(anchor_m["sft_id"], anchor_m["sft_tokens"]))
    judgments = judge(cfg, groups)
    anchor = LA.Anchor(None, source, why)
    if anchor_m is not None:
        anchor.outcomes = judged(cfg, anchor_m, judgments["anchor"], tokens)
        write_parquet(edir / "anchor-outcomes.parquet", anchor.outcomes)
    out, res = compare(cfg, groups["sft"], judgments["sft"], tokens, anchor)
    write_parquet(edir / "judgments.parquet", pl.concat(list(judgments.values())).unique("key", maintain_order=True))
    write_parquet(edir / "outcomes.parquet", out)
    if turned:
        out_t, res["per_turn"] = per_turn(cfg, every, pl.concat([judgments["sft"], judgments["turns"]]), tokens)
        write_parquet(edir / "outcomes-per-turn.parquet", out_t)
    vs_prev = None
    if prev is not None:
        out_p, vs_prev = compare(cfg, groups["previous"], judgments["previous"], tokens, anchor)
        write_parquet(edir / "outcomes-vs-previous.parquet", out_p)
        vs_prev = {key: vs_prev.get(key) for key in ("win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci",
                                                     "lc_status", "lc_reason", "length_coef", "n_comparisons",
                                                     "length_anchor",
                                                     "n_identical", "position_consistency")}
    ra = reward_accuracy(cfg, k)
    result = {"round": k, **res, **(ra or {}), "checks": checks, "vs_previous": vs_prev, "mode": cfg.evaluate.mode,
              "judge_model": judge_label(model, adapter), "judge_adapter": adapter,
              "judged_by_policy": adapter is not None, "heldout_prompts": cfg.evaluate.prompts,
              "policy": {"base": policy_base(cfg, k), "adapter": str(adapter_dir(cfg, k).resolve())},
              "sampling": {"temperature": cfg.evaluate.temperature,
                           "max_tokens": cfg.evaluate.max_tokens or cfg.generate.max_tokens,
                           # the answers go through generate's settings (answers() above), so these apply too
                           **{k: getattr(cfg.generate, k) for k in ("sampling_args", "system_prompt",
                                                                     "chat_template")}},
              "timing": {"answers_s": round(t_gen, 3), "wall_s": round(time.perf_counter() - t0, 3)}}
    path = write_json(cfg.round_dir() / EVAL_JSON, result)
    print(headline(result))
    if checks:
        print(f"evaluate: {CK.headline(checks)}")
    return path


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


BIASED = ("BIASED: round {k}'s policy judged its own answers against SFT's (evaluate.judge_policy: a judge "
          "favours answers like its own); read the win rate as the policy's opinion of itself")


def headline(e: dict) -> str:
    lo, hi = e["win_rate_ci"]
    lc = _pct(e["lc_win_rate"]) if e.get("lc_win_rate") is not None else f"n/a ({e.get('lc_reason')})"
    text = (f"evaluate: round {e['round']} vs SFT on {e['n_prompts']} held-out prompts: win rate "
            f"{_pct(e['win_rate'])} (95% CI {_pct(lo)}–{_pct(hi)}), LC win rate {lc}, "
            f"mean tokens {e['policy_mean_tokens'] or 0:.1f} vs {e['sft_mean_tokens'] or 0:.1f}, "
            f"{e['n_identical']} identical answers (ties)")
    if e.get("position_consistency") is not None:
        text += f", judge position consistency {e['position_consistency']:.2f}"
    if e.get("per_turn"):  # played conversations: the figure above is each one's last turn
        text += "; per turn: " + ", ".join(
            f"turn {t['turn']} {_pct(t['win_rate'])} (95% CI {_pct(t['win_rate_ci'][0])}–{_pct(t['win_rate_ci'][1])}, "
            f"n={t['n']})" for t in e["per_turn"])
    if e.get("vs_previous"):
        text += f"; vs round {e['round'] - 1}: {_pct(e['vs_previous']['win_rate'])}"
    if e.get("reward_accuracy") is not None:
        text += f"; implicit-reward accuracy {_pct(e['reward_accuracy'])} on {e['n_reward_pairs']} held-out pairs"
    if e.get("judged_by_policy"):
        text = f"evaluate: {BIASED.format(k=e['round'])}\n{text}"
    return text
