"""Meta-Rewarding's judge pairs (judge.meta): the policy judges its own judgments, and the judgment it
prefers becomes a training pair for its judging (Wu et al. 2024, "Meta-Rewarding Language Models",
arXiv 2407.19594, sec. 2). With judge.model=policy and mode score, after the round is ranked:

1. each accepted candidate gets judge.meta_judgments judgments sampled from the policy
   (templates/judgment-v1.yaml: a short rationale, then `Score: N`), at judge.meta_temperature,
   each call seeded by (seed, round, candidate, sample), through the ledger like every judge call;
2. per prompt, the candidate whose judgments' scores vary most is meta-judged (the paper's choice of
   the response whose judge scores have the highest variance: where the judge is least sure of
   itself, its judgments differ most); ties go to the first candidate id, unparsed scores count as
   no score;
3. every two of that candidate's judgments are compared by the meta-judge, the policy again,
   in both orders (templates/meta-judge-v1.yaml), verdicts off the label logits;
4. each judgment's win share (its mean probability of winning over its comparisons, both orders; the
   paper fits Elo ratings to the same battles, a win share ranks a round robin the same way up to
   noise) ranks them. Length control, as the paper applies to the actor's pairs (sec. 2.1: the
   chosen is the shortest response within a top quality tier [(1 - rho) max + rho min, max]) and
   rlaif applies to the judge's pairs too, so the judge is not taught that longer judgments win:
   chosen = the shortest judgment whose share is within RHO of the best, rejected = the lowest
   share (the longest among equals).

The judge stage writes meta-judgments.parquet (every judgment and meta-judgment, judgments schema) and
meta-pairs.parquet (the judge pairs, PAIRS_SCHEMA plus kind "judge"); the filter appends them to
pairs.parquet beside the actor pairs (kind "actor") and counts them apart in pairs.card.json.
Prompts that form no judge pair are counted by reason in the report's `meta` section.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import polars as pl

from rlaif.io import JUDGMENTS_SCHEMA, PAIRS_SCHEMA, stable_id, write_parquet
from rlaif.judge import templates as T
from rlaif.judge.candidates import chats_of
from rlaif.judge.backends import Call
from rlaif.judge.ledger import call_key

JUDGMENTS_FILE = "meta-judgments.parquet"
PAIRS_FILE = "meta-pairs.parquet"
PAIRS_OUT = pl.Schema({**PAIRS_SCHEMA, "kind": pl.String})
RHO = 0.1  # the top tier's width, as a share of the best-to-worst spread of win shares


def meta_spec(spec: T.Spec) -> T.Spec:
    """The session's spec with the judgment template as its free-text kind and the meta-judge
    template as its pairwise kind: the same criteria, so every version changes with the rubric."""
    def load(name: str) -> T.Template:
        t = T._read_template(T.HERE / f"{name}.yaml", "template")
        return T.Template(name, t["system"], t["user"], t["digest"])

    return replace(spec, templates={"critique": load("judgment-v1"), "pairwise": load("meta-judge-v1")})


def judgment_calls(js, cfg, spec: T.Spec, pid: str, chat, cand: tuple) -> list[Call]:
    """judge.meta_judgments sampled judgments of cand = (candidate_id, text)."""
    j = cfg.judge
    msgs = tuple(spec.render("critique", chat, cand[1]))
    version = spec.version("critique")
    out = []
    for i in range(j.meta_judgments):
        tag = f"#meta-sample{i}@t{j.meta_temperature}"
        key = call_key(js.identity, version + T.fence_tag(chat, cand[1]) + spec.turn_tag(chat) + tag, chat, cand[1],
                       None, None, f"max_tokens={j.meta_max_tokens}")
        seed = int(stable_id([cfg.seed, cfg.round, cand[0], i], n=8), 16)
        out.append(Call(key, pid, "critique", cand[0], None, None, msgs, sum(len(m["content"]) for m in msgs) // 3,
                        (), tuple(chat), None, f"j{i}", j.meta_max_tokens, version=version,
                        temperature=j.meta_temperature, seed=seed))
    return out


def score_spread(texts: list[str | None]) -> float:
    """Population variance of the scores the judgments end with (unparsed ones left out)."""
    scores = [v for v, _ in (T.parse("score", t, explain=True) for t in texts if t) if v is not None]
    return statistics.pvariance(scores) if len(scores) >= 2 else 0.0


def win_shares(meta: pl.DataFrame) -> dict[str, float]:
    """Each judgment's mean probability of winning its comparisons (both orders); invalid ones skipped."""
    won: dict[str, float] = {}
    seen: dict[str, int] = {}
    for r in meta.iter_rows(named=True):
        if r["verdict"] not in ("a", "b", "tie"):
            continue
        p = r["p_a"] if r["p_a"] is not None else (r["grade"] + 2) / 4 if r["grade"] is not None \
            else {"a": 1.0, "b": 0.0, "tie": 0.5}[r["verdict"]]
        for who, s in ((r["a_id"], p), (r["b_id"], 1 - p)):
            won[who] = won.get(who, 0.0) + s
            seen[who] = seen.get(who, 0) + 1
    return {k: won[k] / seen[k] for k in won}


def pick(shares: dict[str, float], texts: dict[str, str]) -> tuple[str, str] | None:
    """(chosen, rejected) judgment ids with the length control above; None when all shares are equal."""
    hi, lo = max(shares.values()), min(shares.values())
    if hi - lo < 1e-9:
        return None
    tier = [k for k, s in shares.items() if s >= hi - RHO * (hi - lo)]
    chosen = min(tier, key=lambda k: (len(texts[k]), k))
    bottom = [k for k, s in shares.items() if s == lo]
    rejected = max(bottom, key=lambda k: (len(texts[k]), k))
    return chosen, rejected


def meta_round(js, cfg, accepted: pl.DataFrame, rdir: Path) -> dict:
    """Sample judgments, meta-judge them and write the judge pairs; returns the report's meta section."""
    spec = meta_spec(js.spec)
    chats = chats_of(accepted)
    jcalls = [c for r in accepted.iter_rows(named=True)
              for c in judgment_calls(js, cfg, spec, r["prompt_id"], chats[r["prompt_id"]],
                                      (r["candidate_id"], r["response"]))]
    js.send(jcalls, "judge: meta, judgments")
    judged = js.results(jcalls)
    # a judgment cut off at meta_max_tokens is still one the policy wrote; filter.drop_length_truncated
    # drops the pairs it would be part of, as it does actor pairs
    text = {(r["a_id"], r["item"]): r for r in judged.iter_rows(named=True) if r["verdict"] in ("text", "cut_off")}
    removed = {"no_two_judgments": 0, "meta_tie": 0, "identical": 0, "truncated": 0}
    mcalls, chosen_cand = [], {}
    responses = dict(zip(accepted["candidate_id"], accepted["response"]))
    for pid, grp in accepted.sort("candidate_id").group_by("prompt_id", maintain_order=True):
        best = None
        for cid in grp["candidate_id"]:
            mine = [text[(cid, f"j{i}")]["rationale"] for i in range(cfg.judge.meta_judgments) if (cid, f"j{i}") in text]
            if len(mine) >= 2 and (best is None or score_spread(mine) > best[1]):
                best = (cid, score_spread(mine))
        if best is None:
            removed["no_two_judgments"] += 1
            continue
        cid = best[0]
        chosen_cand[pid[0]] = cid
        ids = [(f"{cid}#j{i}", text[(cid, f"j{i}")]["rationale"]) for i in range(cfg.judge.meta_judgments)
               if (cid, f"j{i}") in text]
        convo = [*chats[pid[0]], {"role": "assistant", "content": responses[cid]}]
        mcalls += [c for a, b in combinations(ids, 2) for c in js.pairwise(pid[0], convo, a, b, spec=spec)]
    if mcalls and not js.runner.stopped:
        js.send(mcalls, "judge: meta, meta-judge")
    meta = js.results(mcalls)
    write_parquet(rdir / JUDGMENTS_FILE, pl.concat([judged, meta]).select(list(JUDGMENTS_SCHEMA)), JUDGMENTS_SCHEMA)
    rows = judge_pairs(cfg, spec, chats, responses, chosen_cand, text, meta, removed)
    write_parquet(rdir / PAIRS_FILE, pl.DataFrame(rows, schema=PAIRS_OUT), PAIRS_OUT)
    return {"judgments": len(jcalls), "meta_calls": len(mcalls), "prompts": len(chats),
            "judge_pairs": len(rows), "removed": removed,
            "pending_calls": len({c.key for c in jcalls + mcalls}) - judged.height - meta["key"].n_unique(),
            "rule": f"win share over both orders; chosen: the shortest within {RHO} of the best spread, "
                    "rejected: the lowest (arXiv 2407.19594 sec. 2)"}


def judge_pairs(cfg, spec, chats, responses, chosen_cand, text, meta: pl.DataFrame, removed: dict) -> list[dict]:
    rows = []
    for pid, cid in chosen_cand.items():
        mine = meta.filter(pl.col("prompt_id") == pid)
        texts = {f"{cid}#j{i}": text[(cid, f"j{i}")]["rationale"] for i in range(cfg.judge.meta_judgments)
                 if (cid, f"j{i}") in text}
        tokens = {f"{cid}#j{i}": text[(cid, f"j{i}")]["output_tokens"] for i in range(cfg.judge.meta_judgments)
                  if (cid, f"j{i}") in text}
        shares = win_shares(mine)
        got = pick(shares, texts) if len(shares) >= 2 else None
        if got is None:
            removed["meta_tie"] += 1
            continue
        c, r = got
        if " ".join(texts[c].split()) == " ".join(texts[r].split()):
            removed["identical"] += 1
            continue
        cut = {k for k in (c, r) if text[(cid, k.split("#")[-1])]["verdict"] == "cut_off"}
        if cut and cfg.filter.drop_length_truncated:
            removed["truncated"] += 1
            continue
        direct = mine.filter(pl.col("a_id").is_in([c, r]) & pl.col("b_id").is_in([c, r]))
        winners = {x["a_id"] if x["verdict"] == "a" else x["b_id"] if x["verdict"] == "b" else None
                   for x in direct.iter_rows(named=True)}
        rows.append({"prompt_id": pid, "messages": spec.render("critique", chats[pid], responses[cid]),
                     "chosen": texts[c], "rejected": texts[r], "chosen_id": c, "rejected_id": r,
                     "margin": shares[c] - shares[r], "consistent": winners == {c},
                     "chosen_tokens": tokens[c], "rejected_tokens": tokens[r], "round": cfg.round, "kind": "judge"})
    return rows
