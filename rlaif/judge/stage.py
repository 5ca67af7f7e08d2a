"""The judge stage: candidates -> ledger -> judgments.parquet + judge-report.json -> pairs.

    rlaif judge --config configs/quickstart.yaml

Every call goes through the ledger first (rlaif.judge.session): a key with a stored reply is
never sent again, so a rerun after a crash, a budget stop or a quota stop pays only for what is
still missing. judge.manifest.json is written last, only when every planned call has a verdict
and the audit passed (position consistency, invalid rate); the filter refuses judgments without it.

    rlaif judge --config CONFIG --submit-only     (judge.mode_api=batch)

submits this round's batches (those the budget admits), records them in the ledger and returns
without waiting for the batch window or writing anything downstream; a later plain `rlaif judge`
or `rlaif run` adopts, polls and collects them, then finishes the stage. `--submit-only` again
collects the batches that have finished (one status request each) and submits the next phase's
(best_vs_worst: scores, then pairs), and finishes the stage once nothing is left in flight, so
repeating it (from cron, say) completes a round with no process waiting through the window.
"""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import BudgetExceeded, JudgeIncomplete, JudgeUnreliable, UserError
from rlaif.io import JUDGMENTS_NARROW, JUDGMENTS_SCHEMA, scan_parquet_checked, write_json
from rlaif.judge.candidates import scan_candidates, split_inputs
from rlaif.judge.pairs.rank import rank_round
from rlaif.judge.trust.audit import build_report, print_report
from rlaif.judge.session import JudgeSession

MANIFEST = "judge.manifest.json"


def judge_round(js: JudgeSession, cfg: RunConfig, accepted: pl.LazyFrame) -> tuple[list, int]:
    """This round's calls for pairs.source: ranking (pairs/rank.py), revising (pairs/revise.py) or both.
    Ranking reads the accepted candidates as it needs them (streamed for score, reward and verify
    calls); revising and meta-judging take them as one frame."""
    revise = None
    if cfg.pairs.source != "rank":
        from rlaif.judge.pairs import revise

        revise.check(cfg)  # a bad setting is one line, before any call
    whole = accepted.collect(engine="streaming") if revise or cfg.judge.meta else accepted
    plan, identical = rank_round(js, cfg, whole) if cfg.pairs.source != "revise" else ([], 0)
    if revise and not js.runner.stopped:
        plan += revise.revise_round(js, cfg, whole)
    if cfg.judge.meta and not js.runner.stopped:  # Meta-Rewarding: the judge's own pairs (pairs/meta.py)
        from rlaif.judge.pairs import meta

        js.meta = meta.meta_round(js, cfg, whole, cfg.round_dir())
    return plan, identical


def run(cfg: RunConfig, submit_only: bool = False) -> Path:
    """The round's judgments and pairs; with submit_only (batch mode), the round folder once its
    batches are submitted (nothing written there), or the pairs when nothing was left to wait for."""
    from rlaif.judge.trust.calibrate import check_min_agreement  # judge.min_agreement: refuse before any work
    check_min_agreement(cfg)
    j, rdir, t0 = cfg.judge, cfg.round_dir(), time.perf_counter()
    if submit_only and not (j.backend == "openai" and j.mode_api == "batch"):
        raise UserError(f"rlaif judge --submit-only: for judge.mode_api=batch (judge.backend={j.backend}, "
                        f"judge.mode_api={j.mode_api}): live calls have no batch to submit")
    (rdir / MANIFEST).unlink(missing_ok=True)  # judged again: not done until this run says so
    for stale in ("meta-judgments.parquet", "meta-pairs.parquet"):  # judge.meta writes them anew, or nobody
        (rdir / stale).unlink(missing_ok=True)
    # The candidates stay a lazy scan: ranking streams the accepted rows where its calls judge one
    # candidate each (pairs/rank.py), the report and the filter read the round's files with polars'
    # streaming engine (issue 22, item 5: peak memory flat in the number of calls).
    cands = scan_candidates(rdir)
    accepted, rejected = split_inputs(cands, j)
    js = JudgeSession(cfg, j.ledger or rdir / "judge-ledger.sqlite")
    js.runner.submit_only = submit_only
    plan: list = []
    deferred = False
    try:
        plan, identical = judge_round(js, cfg, accepted)
        del accepted
        deferred = js.runner.deferred > 0  # submit-only: batches in flight, nothing to write yet
    finally:
        try:
            for stale in ("pairs.card.json", "pairs.parquet"):  # pairs must come from these judgments or not exist
                (rdir / stale).unlink(missing_ok=True)
            if not deferred:  # streamed from the ledger a slice at a time (JudgeSession.write_results)
                js.write_results(plan, rdir / "judgments.parquet")
        finally:
            js.close()
    if deferred:
        return submitted(js, rdir)
    # the report streams the judgments without their texts; its few rationale samples are read lazily
    judgments = scan_parquet_checked(rdir / "judgments.parquet", JUDGMENTS_SCHEMA, "judgments", JUDGMENTS_NARROW)
    rows = judgments.select(pl.len()).collect().item()
    report = build_report(cfg, judgments, cands, rejected, js, identical, js.pending(plan, judgments),
                          texts=pl.scan_parquet(rdir / "judgments.parquet"))
    if js.runner.batch and js.runner.admission:
        report["batch_admission"] = admission_report(js.runner)
    if getattr(js, "tiebreak", None):  # judge.backend=verifier: what the LLM tiebreak decided (pairs/tiebreak.py)
        report["tiebreak"] = js.tiebreak
    if getattr(js, "meta", None):
        report["meta"] = js.meta
        report["pending_calls"] += js.meta["pending_calls"]
    write_json(rdir / "judge-report.json", report)
    print_report(report)
    gate(js, report)
    write_json(rdir / MANIFEST, {"stage": "judge", "round": cfg.round, "judge_id": js.judge_id,
                                 "judge_model": js.model, "judge_adapter": js.adapter, "judged_by": report["judged_by"],
                                 "calls": report["calls"], "pending_calls": 0,
                                 "judgments": rows, "rubric": report["rubric"],
                                 "wall_s": round(time.perf_counter() - t0, 3)})
    from rlaif.judge.pairs.filter import run as run_filter

    return run_filter(cfg)


def submitted(js: JudgeSession, rdir: Path) -> Path:
    """--submit-only: say what is in flight and how to collect it; the round folder is the result."""
    r, b = js.runner, js.runner.backend
    cap = f"; {r.stopped}: {left_line(r)}" if r.left else ""
    print(f"judge: submitted {b.stats['chunks_submitted']} batch(es) with {b.stats['calls_submitted']} calls; "
          f"rerun `rlaif judge CONFIG` (or `rlaif run`) to collect ({b.in_flight} batch(es) in flight, "
          f"{r.deferred} calls to collect{cap})")
    return rdir


def left_line(r) -> str:
    """How many calls a cap left unsent in the phase it stopped, and what sending them would cost."""
    return (f"{r.left['calls']} calls of this phase not sent, {r.left['basis']} ${r.left['cost_usd']:.4f} more "
            "to continue")


def admission_report(r) -> dict:
    """judge-report.json's batch_admission: what each template's batch calls were admitted at."""
    from rlaif.judge.runner import MIN_MEASURED

    by = {v: {**b, "expected_cost_usd": round(b["expected_cost_usd"], 6)} for v, b in r.admission.items()}
    return {"rule": f"expected cost: input estimate + mean output tokens of this judge's earlier replies on "
                    f"the template version when the ledger holds >= {MIN_MEASURED}, else the reply cap",
            "by_template": by, "not_admitted": r.left}


def gate(js: JudgeSession, report: dict) -> None:
    """Stop loudly, before any pair exists, when the judgments are unfinished or untrustworthy."""
    j, r = js.j, js.runner
    if r.stopped:
        left = f" ({left_line(r)})" if r.left else ""
        raise BudgetExceeded(f"judge stopped: {r.stopped}: ${r.cost:.4f} spent over {r.calls} paid calls "
                             f"in the ledger; at least {report['pending_calls']} calls still pending{left}. "
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
