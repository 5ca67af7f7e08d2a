"""What can the 135M demo model judge? Its checklist P(yes) and pairwise verdicts on candidates it wrote.

    .venv/bin/rlaif generate --config configs/quickstart.yaml run_dir=/tmp/dj round=0      # candidates
    .venv/bin/python bench/demo_judge.py /tmp/dj/round-0 [--item "Is the response ...?"] [--pairwise] [--out r.json]

For every candidate in ROUND_DIR/candidates, the property the config's rubric asks for is
measured without a judge (the config's first `evaluate.checks` entry, or --check NAME), then
the local judge (the demo model, through rlaif's JudgeSession and a throwaway ledger) answers
each checklist item for each candidate. Reported per item:
- auc: P(P(yes | has the property) > P(yes | lacks it)) over all candidates (Mann-Whitney; 0.5 is chance);
- within_prompt: over prompts with candidates on both sides, the share of (has, lacks) pairs
  where the one with the property got the higher P(yes) — what best-vs-worst pairs are made of;
- top_has: over those prompts, the share where the best-scored candidate has the property.
With --pairwise, the judge also compares each mixed (has, lacks) pair in both orders under the
config's rubric: position consistency, and how often a consistent verdict picks the property.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from rlaif.config import load_config  # noqa: E402
from rlaif.evaluate.checks import predicate  # noqa: E402
from rlaif.judge.session import JudgeSession  # noqa: E402
from rlaif.judge.stage import read_candidates  # noqa: E402


def pair_wins(pos: list[float], neg: list[float]) -> list[float]:
    """1 where the candidate with the property scored higher, 0.5 on a tie, 0 otherwise, for every (pos, neg)."""
    return [float(p > n) + 0.5 * (p == n) for p, n in product(pos, neg)]


def auc(pos: list[float], neg: list[float]) -> float | None:
    return float(np.mean(pair_wins(pos, neg))) if pos and neg else None


def checklist_scores(cfg_path: str, cands: pl.DataFrame, items: list[str], ledger: Path,
                     extra: list[str]) -> pl.DataFrame:
    """(candidate_id, item, p_yes) for every candidate and item, judged by the config's local judge."""
    cfg = load_config(cfg_path, ["judge.mode=checklist", *extra])
    cfg.judge.checklist = items
    rows = []
    with JudgeSession(cfg, ledger) as js:
        calls = [c for r in cands.iter_rows(named=True)
                 for c in js.single(r["prompt_id"], r["messages"], (r["candidate_id"], r["response"]))]
        js.send(calls, "bench: checklist")
        res = js.results(calls)
    for r in res.iter_rows(named=True):
        rows.append({"candidate_id": r["a_id"], "item": items[int(r["item"])], "p_yes": r["score_a"]})
    return pl.DataFrame(rows)


def pairwise(cfg_path: str, cands: pl.DataFrame, ledger: Path) -> dict:
    """Both orders on every (has, lacks) pair of a prompt, under the config's rubric (shipped template)."""
    cfg = load_config(cfg_path, ["judge.mode=pairwise", "judge.template=null"])
    pairs = []
    for (pid,), g in cands.group_by("prompt_id", maintain_order=True):
        has = g.filter(pl.col("has")).rows(named=True)
        lacks = g.filter(~pl.col("has")).rows(named=True)
        pairs += [(pid, h, n) for h, n in product(has, lacks)]
    with JudgeSession(cfg, ledger) as js:
        calls = [c for pid, h, n in pairs for c in js.pairwise(pid, h["messages"], (h["candidate_id"], h["response"]),
                                                               (n["candidate_id"], n["response"]))]
        js.send(calls, "bench: pairwise")
        res = js.results(calls)
    by = res.group_by("a_id", "b_id").agg(v=pl.col("verdict").sort_by("order"))  # [ab, ba]
    v = [tuple(x) for x in by["v"].to_list()]
    consistent = [x for x in v if len(x) == 2 and x[0] == x[1] and x[0] in ("a", "b")]
    first_slot = sum((x[0] == "a") + (x[1] == "b") for x in v if len(x) == 2)  # "a" in ab, "b" in ba: slot A won
    return {"pairs": len(v), "position_consistency": len(consistent) / len(v) if v else None,
            "slot_a_share": first_slot / (2 * len(v)) if v else None,
            "consistent_pick_property": (sum(x[0] == "a" for x in consistent) / len(consistent)) if consistent else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("round_dir")
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--check", default=None, help="evaluate.checks name in the config (default: the first)")
    ap.add_argument("--item", action="append", help="checklist item(s); default: the config's judge.checklist")
    ap.add_argument("--template", help="judge.template: a template file of yours instead of the shipped one")
    ap.add_argument("--prompts", type=int, help="only the first N prompts' candidates")
    ap.add_argument("--pairwise", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    cfg = load_config(a.config)
    name = a.check or next(iter(cfg.evaluate.checks))
    test = predicate(cfg.evaluate.checks[name])
    cands = read_candidates(Path(a.round_dir))
    if a.prompts:
        cands = cands.filter(pl.col("prompt_id").is_in(cands["prompt_id"].unique(maintain_order=True).head(a.prompts).to_list()))
    cands = cands.with_columns(has=pl.Series([bool(test(m, r)) for m, r in
                                              zip(cands["messages"].to_list(), cands["response"].to_list())]))
    items = a.item or [i.item for i in cfg.judge.items()]
    out = {"candidates": cands.height, "check": name, "template": a.template or "shipped", "has_share": float(cands["has"].mean()),
           "truncated_share": float((cands["finish_reason"] == "length").mean()),
           "mean_tokens": float(cands["num_tokens"].mean()),
           "prompts_mixed": int(cands.group_by("prompt_id").agg(m=pl.col("has").n_unique() == 2)["m"].sum()),
           "items": {}}
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"judge.template={a.template}"] if a.template else []
        sc = checklist_scores(a.config, cands, items, Path(tmp) / "ledger.sqlite", extra)
        for it in items:
            s = sc.filter(pl.col("item") == it).join(cands.select("candidate_id", "prompt_id", "has"), on="candidate_id")
            pos, neg = s.filter(pl.col("has"))["p_yes"].to_list(), s.filter(~pl.col("has"))["p_yes"].to_list()
            within, top = [], []
            for (_,), g in s.group_by("prompt_id"):
                h, n = g.filter(pl.col("has"))["p_yes"].to_list(), g.filter(~pl.col("has"))["p_yes"].to_list()
                if h and n:
                    within += pair_wins(h, n)
                    top.append(bool(g.sort("p_yes", descending=True)["has"][0]))
            out["items"][it] = {"auc": auc(pos, neg), "mean_p_yes_has": float(np.mean(pos)) if pos else None,
                                "mean_p_yes_lacks": float(np.mean(neg)) if neg else None,
                                "within_prompt": float(np.mean(within)) if within else None,
                                "top_has": float(np.mean(top)) if top else None, "n_mixed_prompts": len(top)}
        if a.pairwise:
            out["pairwise"] = pairwise(a.config, cands, Path(tmp) / "ledger-pw.sqlite")
    print(json.dumps(out, indent=2))
    if a.out:  # the figures, and beside them every candidate's P(yes) per item for a closer look
        Path(a.out).write_text(json.dumps(out, indent=2))
        sc.join(cands.select("candidate_id", "prompt_id", "has", "num_tokens", "finish_reason", "response"),
                on="candidate_id").write_parquet(Path(a.out).with_suffix(".parquet"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
