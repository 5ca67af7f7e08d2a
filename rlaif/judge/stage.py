"""The judge stage: candidates -> ledger -> judgments.parquet + judge-report.json -> pairs.

    rlaif judge --config configs/quickstart.yaml

Every call goes through the ledger first (rlaif.judge.session): a key with a stored reply is
never sent again, so a rerun after a crash, a budget stop or a quota stop pays only for what is
still missing. judge.manifest.json is written last, only when every planned call has a verdict
and the audit passed (position consistency, invalid rate); the filter refuses judgments without it.
"""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import BudgetExceeded, JudgeIncomplete, JudgeUnreliable
from rlaif.io import JUDGMENTS_SCHEMA, write_json, write_parquet
from rlaif.judge.candidates import read_candidates, split_inputs
from rlaif.judge.pairs.rank import rank_round
from rlaif.judge.trust.audit import build_report, print_report
from rlaif.judge.session import JudgeSession

MANIFEST = "judge.manifest.json"


def judge_round(js: JudgeSession, cfg: RunConfig, accepted: pl.DataFrame) -> tuple[list, int]:
    """This round's calls for pairs.source: ranking (pairs/rank.py), revising (pairs/revise.py) or both."""
    revise = None
    if cfg.pairs.source != "rank":
        from rlaif.judge.pairs import revise

        revise.check(cfg)  # a bad setting is one line, before any call
    plan, identical = rank_round(js, cfg, accepted) if cfg.pairs.source != "revise" else ([], 0)
    if revise and not js.runner.stopped:
        plan += revise.revise_round(js, cfg, accepted)
    return plan, identical


def run(cfg: RunConfig) -> Path:
    from rlaif.judge.trust.calibrate import check_min_agreement  # judge.min_agreement: refuse before any work
    check_min_agreement(cfg)
    j, rdir, t0 = cfg.judge, cfg.round_dir(), time.perf_counter()
    (rdir / MANIFEST).unlink(missing_ok=True)  # judged again: not done until this run says so
    cands = read_candidates(rdir)
    accepted, rejected = split_inputs(cands, j)
    js = JudgeSession(cfg, j.ledger or rdir / "judge-ledger.sqlite")
    plan: list = []
    try:
        plan, identical = judge_round(js, cfg, accepted)
    finally:
        judgments = js.results(plan)
        js.close()
        for stale in ("pairs.card.json", "pairs.parquet"):  # pairs must come from these judgments or not exist
            (rdir / stale).unlink(missing_ok=True)
        write_parquet(rdir / "judgments.parquet", judgments, JUDGMENTS_SCHEMA)
    report = build_report(cfg, judgments, cands, rejected, js, identical, js.pending(plan, judgments))
    write_json(rdir / "judge-report.json", report)
    print_report(report)
    gate(js, report)
    write_json(rdir / MANIFEST, {"stage": "judge", "round": cfg.round, "judge_id": js.judge_id,
                                 "judge_model": js.model, "calls": report["calls"], "pending_calls": 0,
                                 "judgments": judgments.height, "rubric": report["rubric"],
                                 "wall_s": round(time.perf_counter() - t0, 3)})
    from rlaif.judge.pairs.filter import run as run_filter

    return run_filter(cfg)


def gate(js: JudgeSession, report: dict) -> None:
    """Stop loudly, before any pair exists, when the judgments are unfinished or untrustworthy."""
    j, r = js.j, js.runner
    if r.stopped:
        raise BudgetExceeded(f"judge stopped: {r.stopped}: ${r.cost:.4f} spent over {r.calls} paid calls "
                             f"in the ledger; at least {report['pending_calls']} calls still pending. "
                             "Rerun (with a higher cap) to continue: finished calls are never paid again")
    if report["pending_calls"]:
        raise JudgeIncomplete(f"judge: {report['pending_calls']} calls got no reply after all retries "
                              f"(last error: {r.last_error}); rerun to retry only those")
    if report["invalid_rate"] is not None and report["invalid_rate"] > j.max_invalid_rate:
        raise JudgeUnreliable(f"judge: {report['invalid_calls']} of {report['calls']} verdicts are invalid "
                              f"(rate {report['invalid_rate']:.3f} > judge.max_invalid_rate={j.max_invalid_rate}); "
                              "no pairs written. The raw replies are in judgments.parquet (column raw)")
    pc = report["position_consistency"]
    if pc is not None and pc < j.min_consistency:
        raise JudgeUnreliable(f"judge position consistency {pc:.3f} is below "
                              f"judge.min_consistency={j.min_consistency}; no pairs written (see judge-report.json)")
