"""Judge calls for `rlaif plan`, by kind, counted the way the stages make them: the judge stage's
own planning (rlaif/judge/pairs/rank.py planned_calls, which calibrate's cost projection uses too),
revise's critique/revision/confirm (rlaif/judge/pairs/revise.py), evaluate's matchups
(rlaif/evaluate/stage.py run + lc_anchor.py) and calibrate's gold rows (rlaif/judge/trust/calibrate.py plan).
Nothing is sent; where a round has no candidates yet, N placeholders per prompt stand in for them.
"""
from __future__ import annotations

import polars as pl


def placeholders(prompts: pl.DataFrame, n: int, tokens: int) -> pl.DataFrame:
    """N distinct candidates per prompt of about `tokens` tokens each, where a round has none yet; a `turns`
    row's candidates answer its last turn after placeholder answers to the earlier ones (played_chat)."""
    turns = prompts["turns"].to_list() if "turns" in prompts.columns else [None] * prompts.height
    rows = [{"prompt_id": pid, "candidate_id": f"{pid}-{i}", "messages": played_chat(m, t, tokens), "model": "policy",
             "adapter": None, "response": f"({i}) " + "word " * max(tokens - 2, 1), "num_tokens": tokens,
             "finish_reason": "stop"}
            for pid, m, t in zip(prompts["prompt_id"], prompts["messages"].to_list(), turns) for i in range(n)]
    return pl.DataFrame(rows)


def played_chat(messages: list, turns: list | None, tokens: int) -> list:
    """The conversation generate plays out of a `turns` row (rlaif/generate/turns.py), an answer of about
    `tokens` tokens standing in for each of the policy's earlier turns."""
    chat = list(messages)
    for t in (turns or [])[1:]:
        chat += [{"role": "assistant", "content": "word " * tokens}, {"role": "user", "content": t}]
    return chat


def played_turns(prompts: pl.DataFrame) -> dict[str, int]:
    """What playing a prompt set's `turns` rows costs before its last turns are sampled: one n=1 answer per
    earlier user turn (`answers`) in `passes` sampling passes, one after another; `turns`: every user turn
    (a row without turns has one), the answers a side gives when evaluation plays the set."""
    if "turns" not in prompts.columns:
        return {"answers": 0, "passes": 0, "turns": prompts.height}
    n = prompts["turns"].list.len().fill_null(1)
    return {"answers": int((n - 1).sum()), "passes": int(n.max() or 1) - 1, "turns": int(n.sum())}


def round_candidates(cfg, k: int, prompts: pl.DataFrame, resp_tokens: int) -> tuple[pl.DataFrame, str]:
    """This round's accepted candidates when generate has written them (exact counts), else placeholders
    (identical-candidate dedup and prompts skipped for length cannot be known: counts are upper bounds)."""
    from rlaif.judge.candidates import read_candidates, split_inputs

    rdir = cfg.round_dir(k)
    if (rdir / "candidates.manifest.json").exists():
        accepted, _ = split_inputs(read_candidates(rdir), cfg.judge)
        return accepted, "this round's candidates: exact"
    return (placeholders(prompts, cfg.generate.n, resp_tokens),
            f"{cfg.generate.n} placeholder candidates a prompt: identical candidates not deduplicated, an upper bound")


def judge_calls(cfg, accepted: pl.DataFrame) -> dict[str, int]:
    """The judge stage's calls: ranking (pairs.source rank|both) and Constitutional AI revisions
    (revise|both: per prompt one critique, one revision, and with revise.confirm two confirmations)."""
    from rlaif.judge.pairs.rank import planned_calls

    calls = planned_calls(cfg, accepted) if cfg.pairs.source != "revise" else {}
    if cfg.pairs.source != "rank":  # upper bounds: a failed critique is never revised, a failed revision never confirmed
        prompts = accepted["prompt_id"].n_unique()
        calls.update(critique=prompts, revision=prompts)
        if cfg.revise.confirm:  # pairwise: both orders; score: revision and original each scored
            key = "pairwise" if cfg.judge.mode == "pairwise" else "score"
            calls[key] = calls.get(key, 0) + 2 * prompts
    if cfg.judge.meta:  # Meta-Rewarding (rlaif/judge/pairs/meta.py): J judgments a candidate, then the
        m = cfg.judge.meta_judgments  # meta-judge on one candidate's J judgments a prompt, both orders
        calls["judgment"] = accepted.height * m
        calls["meta_pairwise"] = accepted["prompt_id"].n_unique() * m * (m - 1)
    return calls


def evaluate_calls(cfg, k: int, heldout: int, accepted: pl.DataFrame, turns: int | None = None) -> dict[str, int]:
    """Round k's evaluate calls: policy vs SFT answers (and vs round k-1's with vs_previous), plus the
    length anchor's pairs of two training candidates. Upper bounds: identical answers are not sent.
    turns: with held-out `turns` rows, every user turn of them (played_turns): evaluation compares every
    turn with SFT's, pairwise as `pairwise_turns` (both conversations in one call: pairwise-turns-v1), and
    the last turns with round k-1's.
    Each round judges through its own ledger (round-K/judge-ledger.sqlite) unless judge.ledger names one
    for the run: then an answer scored in an earlier round (SFT's, round k-1's) is not scored again, and
    an anchor the judge stage already judged (all_pairs compared it; a score/checklist judge scored both)
    is free in every case, since judge and evaluate share the round's ledger."""
    e, j = cfg.evaluate, cfg.judge
    if not e.prompts or not heldout:
        return {}
    from rlaif.evaluate.lc_anchor import anchor_matchups
    from rlaif.judge.session import score_kind
    from rlaif.judge.session import same_text

    anchors, shared = anchor_matchups(accepted, e.length_anchor_prompts, same_text).height, bool(j.ledger)
    prev = bool(e.vs_previous and k > 0)
    played = turns is not None
    turns = heldout if turns is None else turns
    if e.mode == "pairwise":
        free = j.mode == "pairwise" and j.strategy == "all_pairs" and cfg.pairs.source != "revise"
        if played:
            out = {"pairwise_turns": 2 * turns + 2 * heldout * prev, "pairwise": 0 if free else 2 * anchors}
            return {kind: n for kind, n in out.items() if n}
        return {"pairwise": 2 * heldout * (1 + prev) + (0 if free else 2 * anchors)}
    per = max(len(j.checklist), 1) if score_kind(j) == "checklist" else 1
    free = cfg.pairs.source != "revise" and (score_kind(j) != "score" or j.mode == "score" or j.strategy == "best_vs_worst")
    answers = turns * (1 + (k == 0 or not shared)) + heldout * (prev and not shared)  # policy + SFT (+ previous)
    return {score_kind(j): per * (answers + (0 if free else 2 * anchors))}


def gold_as_candidates(cfg):
    """calibrate.gold's rows as candidates (two a row), or None when no gold file is set or readable."""
    if not cfg.calibrate.gold:
        return None
    from rlaif.judge.trust.gold import read_gold

    gold = read_gold(cfg.calibrate)  # calibrate.max_rows applied
    rows = [{"prompt_id": f"gold-{r['row']}", "candidate_id": f"gold-{r['row']}-{s}", "messages": r["messages"],
             "response": r[f"response_{s}"], "finish_reason": "stop"}
            for r in gold.iter_rows(named=True) for s in "ab"]
    return pl.DataFrame(rows) if rows else None


def calibrate_calls(cfg, gold: pl.DataFrame) -> dict[str, int]:
    """`rlaif calibrate` (once, not per round): pairwise both orders per gold row, else each response of a
    row judged alone (per checklist item); rows with two identical texts are never sent."""
    from rlaif.judge.session import score_kind
    from rlaif.judge.session import same_text
    from rlaif.judge.trust.calibrate import label_kind

    j, kind = cfg.judge, label_kind(cfg.judge)
    texts = gold["response"].to_list()
    rows = sum(1 for i in range(0, len(texts), 2) if not same_text(texts[i], texts[i + 1]))
    if kind == "pairwise":
        return {"pairwise": 2 * rows} if rows else {}
    out = {score_kind(j): 2 * rows * (max(len(j.checklist), 1) if kind == "checklist" else 1)}
    if kind == "checklist" and j.checklist_from_prompt:
        out["checklist_writer"] = rows
    return {k: v for k, v in out.items() if v}
