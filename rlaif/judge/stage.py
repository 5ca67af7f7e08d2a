"""The judge stage: candidates -> ledger -> judgments.parquet + judge-report.json -> pairs.

    rlaif judge --config configs/quickstart.yaml

Every call goes through the ledger first: a key with a stored reply is never sent again, so a
rerun after a crash, a budget stop or a quota stop pays only for what is still missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from itertools import combinations
from pathlib import Path

import polars as pl

from rlaif.config import JudgeConfig, RunConfig
from rlaif.errors import BudgetExceeded, JudgeIncomplete, JudgeUnreliable, UserError
from rlaif.io import CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA, read_parquet_checked, write_json, write_parquet
from rlaif.judge import templates as T
from rlaif.judge.backends import Call, Reply, load_judge
from rlaif.judge.inputs import split_inputs
from rlaif.judge.ledger import Ledger, call_key
from rlaif.judge.report import build_report, print_report


def judge_model_name(cfg: RunConfig) -> str:
    j = cfg.judge
    if j.backend == "openai":
        if not j.model:
            raise UserError("judge.model: required with judge.backend=openai (the endpoint's model name)")
        return j.model
    from rlaif.models import resolve_model

    return resolve_model(j.model or cfg.model)


def read_candidates(rdir: Path) -> pl.DataFrame:
    files = sorted((rdir / "candidates").glob("part-*.parquet"))
    if not (rdir / "candidates.manifest.json").exists() or not files:
        raise UserError(f"{rdir}: no finished candidates (candidates.manifest.json); run `rlaif generate` first")
    return read_parquet_checked(files, CANDIDATES_SCHEMA, "candidates")


class Runner:
    """Sends the calls the ledger does not have yet, within the budget, and records each reply."""

    def __init__(self, cfg: RunConfig, ledger: Ledger, model: str) -> None:
        self.cfg, self.j, self.ledger, self.model = cfg, cfg.judge, ledger, model
        self.live_price = self.j.prices.get(model, (0.0, 0.0)) if self.j.backend == "openai" else (0.0, 0.0)
        self.batch = self.j.backend == "openai" and self.j.mode_api == "batch"
        # The Batch API bills at a discount (OpenAI: 50%); budgets and the ledger use what is billed.
        self.price = tuple(p * self.j.batch_discount for p in self.live_price) if self.batch else self.live_price
        if self.j.backend == "openai" and self.j.max_cost_usd is not None and model not in self.j.prices:
            raise UserError(f"judge.prices: no price for {model!r}, so judge.max_cost_usd cannot be enforced")
        self.calls, self.cost = ledger.spent()
        self.reserved: dict[str, float] = {}
        self.backend = None
        self.stopped: str | None = None
        self.last_error: str | None = None
        self.stats = {"calls_made": 0, "retries": 0, "errors": 0, "tokens": 0, "seconds": 0.0}

    def _estimate(self, call: Call) -> float:
        return (call.est_input_tokens * self.price[0] + self.j.max_tokens * self.price[1]) / 1e6

    def admit(self, call: Call) -> bool:
        if self.stopped:
            return False
        if self.j.max_calls is not None and self.calls + len(self.reserved) >= self.j.max_calls:
            self.stopped = f"judge.max_calls={self.j.max_calls} reached"
        elif self.j.max_cost_usd is not None and \
                self.cost + sum(self.reserved.values()) + self._estimate(call) > self.j.max_cost_usd:
            self.stopped = f"judge.max_cost_usd={self.j.max_cost_usd:g} reached"
        else:
            self.reserved[call.key] = self._estimate(call)
            return True
        return False

    def execute(self, calls: list[Call], desc: str) -> None:
        from tqdm.auto import tqdm

        unique = list({c.key: c for c in calls}.values())
        done = self.ledger.done_keys([c.key for c in unique])
        todo = [c for c in unique if c.key not in done]
        if not todo or self.stopped:
            return
        if self.backend is None and self.batch:
            from rlaif.judge.batch import BatchJudge

            self.backend = BatchJudge(self.j, self.model, self.ledger, on_retry=self._retry)
        if self.backend is None:  # built only when something is left to send: a rerun loads no model
            self.backend = load_judge(self.j.backend, cfg=self.j, model=self.model, on_retry=self._retry)
        self.bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc=desc, unit="call")
        self.t0 = t0 = time.monotonic()
        try:
            self.backend.run(todo, self._on_reply, self.admit)
        finally:
            self.stats["seconds"] += time.monotonic() - t0
            self.bar.close()

    def _retry(self) -> None:
        self.stats["retries"] += 1

    def _on_reply(self, call: Call, reply: Reply) -> None:
        self.reserved.pop(call.key, None)
        live = reply.extra.get("live") or not self.batch
        row = interpret(call, reply, self.model, self.live_price if live else self.price)
        if self.batch:  # which API answered, for the audit: the price differs
            row["request"]["api"] = "live" if live else "batch"
        self.ledger.record(row)
        if row["status"] == "done":
            self.calls += 1
            self.cost += row["cost_usd"]
            self.stats["calls_made"] += 1
            self.stats["tokens"] += row["input_tokens"] + row["output_tokens"]
        else:
            self.stats["errors"] += 1
            self.last_error = row["error"]
        rate = self.stats["calls_made"] / max(self.stats["seconds"] + time.monotonic() - self.t0, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix_str(f"{rate:.1f} calls/s, {self.stats['retries']} retries, "
                                 f"{self.stats['tokens']} tok, ${self.cost:.4f}")


def request_meta(call: Call) -> dict:
    """What was sent, for audit: the exact messages are identified by their hash, not stored twice."""
    body = json.dumps(list(call.messages), sort_keys=True).encode()
    return {"kind": call.kind, "order": call.order, "messages_sha256": hashlib.sha256(body).hexdigest()}


def interpret(call: Call, reply: Reply, model: str, price: tuple[float, float]) -> dict:
    """A reply becomes a ledger row. Verdicts name candidates: 'a' means a_id won, whatever its slot."""
    row = {"key": call.key, "prompt_id": call.prompt_id, "kind": call.kind, "a_id": call.a_id, "b_id": call.b_id,
           "order": call.order, "judge_model": model, "template_version": T.template_for(call.kind).version,
           "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens, "latency_s": reply.latency_s,
           "attempts": reply.attempts, "raw": reply.text, "request": request_meta(call),
           "cost_usd": (reply.input_tokens * price[0] + reply.output_tokens * price[1]) / 1e6}
    if reply.error:  # no reply at all: not final, a rerun tries again
        return {**row, "status": "error", "verdict": None, "error": reply.error, "cost_usd": 0.0}
    cut = reply.finish_reason in ("length", "empty")
    error = {"length": "reply cut off (finish_reason=length)", "empty": "empty choices"}.get(reply.finish_reason)
    if call.kind == "score":
        parsed = None if cut else T.parse_score(reply.text)
        score = (T.expected_score(reply.top) if reply.top else None) or parsed
        if parsed is None:
            return {**row, "status": "done", "verdict": "invalid", "error": error or "unparseable score"}
        return {**row, "status": "done", "verdict": "score", "score_a": score}
    slot = None if cut else T.parse_pairwise(reply.text)
    if slot is None:
        return {**row, "status": "done", "verdict": "invalid", "error": error or "unparseable verdict"}
    flip = {"A": "b", "B": "a", "tie": "tie"}
    verdict = slot.lower() if call.order == "ab" else flip[slot]
    p_first = T.p_first_slot(reply.top) if reply.top else None
    p_a = None if p_first is None else (p_first if call.order == "ab" else 1 - p_first)
    return {**row, "status": "done", "verdict": verdict, "p_a": p_a}


def _call(cfg: RunConfig, model: str, kind: str, pid: str, chat: list, a: tuple, b: tuple | None, order) -> Call:
    first, second = (a, b) if order != "ba" else (b, a)
    msgs = T.render(kind, chat, first[1], second[1] if second else None)
    params = {"backend": cfg.judge.backend, "max_tokens": cfg.judge.max_tokens, "temperature": 0}
    key = call_key(model, T.template_for(kind).version, params, chat, a[1], b[1] if b else None, order)
    return Call(key, pid, kind, a[0], b[0] if b else None, order, tuple(msgs),
                sum(len(m["content"]) for m in msgs) // 3)


def _norm(text: str) -> str:
    return " ".join(text.split())


def plan_pairs(cfg: RunConfig, accepted: pl.DataFrame, scores: pl.DataFrame | None) -> tuple[list, int]:
    """(prompt_id, a, b) comparisons; identical texts are never sent (counted instead)."""
    out, identical = [], 0
    best = {}
    if scores is not None:
        valid = scores.filter(pl.col("verdict") == "score").sort(["score_a", "a_id"], descending=[True, False])
        for pid, grp in valid.group_by("prompt_id", maintain_order=True):
            ids = grp["a_id"].to_list()
            if len(ids) >= 2:
                best[pid[0]] = (ids[0], ids[-1])
    for pid, grp in accepted.sort("candidate_id").group_by("prompt_id", maintain_order=True):
        texts = dict(zip(grp["candidate_id"], grp["response"]))
        if cfg.judge.strategy == "all_pairs" or scores is None:
            pairs = list(combinations(sorted(texts), 2))
        else:
            pairs = [best[pid[0]]] if pid[0] in best else []
        for a, b in pairs:
            if _norm(texts[a]) == _norm(texts[b]):
                identical += 1
            else:
                out.append((pid[0], (a, texts[a]), (b, texts[b])))
    return out, identical


def run(cfg: RunConfig) -> Path:
    j, rdir = cfg.judge, cfg.round_dir()
    if j.backend == "openai" and not os.environ.get(j.api_key_env):
        raise UserError(f"judge.backend=openai: environment variable {j.api_key_env} is not set")
    cands = read_candidates(rdir)
    model = judge_model_name(cfg)
    accepted, rejected = split_inputs(cands, j)
    chats = dict(zip(accepted["prompt_id"], accepted["messages"].to_list()))
    ledger = Ledger(j.ledger or rdir / "judge-ledger.sqlite")
    runner = Runner(cfg, ledger, model)
    plan: list[Call] = []
    scores = None
    try:
        if j.mode == "score" or j.strategy == "best_vs_worst":
            sc = [_call(cfg, model, "score", r["prompt_id"], chats[r["prompt_id"]], (r["candidate_id"], r["response"]),
                        None, None) for r in accepted.iter_rows(named=True)]
            runner.execute(sc, "judge: score")
            plan += sc
            scores = derive(ledger, sc)
        identical = 0
        if j.mode == "pairwise" and not runner.stopped:
            comps, identical = plan_pairs(cfg, accepted, scores)
            pw = [_call(cfg, model, "pairwise", pid, chats[pid], a, b, order) for pid, a, b in comps
                  for order in ("ab", "ba")]
            runner.execute(pw, "judge: pairwise")
            plan += pw
    finally:
        judgments = derive(ledger, plan)
        ledger.close()
    for stale in ("pairs.card.json", "pairs.parquet"):  # pairs must come from these judgments or not exist
        (rdir / stale).unlink(missing_ok=True)
    write_parquet(rdir / "judgments.parquet", judgments, JUDGMENTS_SCHEMA)
    pending = len({c.key for c in plan}) - judgments["key"].n_unique()
    report = build_report(cfg, judgments, cands, rejected, runner, model, identical, pending)
    write_json(rdir / "judge-report.json", report)
    print_report(report)
    if runner.stopped:
        raise BudgetExceeded(f"judge stopped: {runner.stopped}: ${runner.cost:.4f} spent over {runner.calls} paid calls "
                             f"in the ledger; at least {report['pending_calls']} calls still pending. "
                             "Rerun (with a higher cap) to continue: finished calls are never paid again")
    if report["pending_calls"]:
        raise JudgeIncomplete(f"judge: {report['pending_calls']} calls got no reply after all retries "
                              f"(last error: {runner.last_error}); rerun to retry only those")
    if report["position_consistency"] is not None and report["position_consistency"] < j.min_consistency:
        raise JudgeUnreliable(f"judge position consistency {report['position_consistency']:.3f} is below "
                              f"judge.min_consistency={j.min_consistency}; no pairs written (see judge-report.json)")
    from rlaif.judge.filter import run as run_filter

    return run_filter(cfg)


def derive(ledger: Ledger, plan: list[Call]) -> pl.DataFrame:
    """judgments = this round's planned calls joined with the ledger's finished results (by key)."""
    ids = pl.DataFrame([{"key": c.key, "prompt_id": c.prompt_id, "kind": c.kind, "a_id": c.a_id, "b_id": c.b_id,
                         "order": c.order} for c in plan],
                       schema={k: pl.String for k in ("key", "prompt_id", "kind", "a_id", "b_id", "order")})
    ids = ids.unique(["key", "a_id", "b_id"], maintain_order=True)
    done = ledger.frame(ids["key"].unique().to_list()).drop("prompt_id", "kind", "a_id", "b_id", "order")
    return ids.join(done, on="key", how="inner").select(list(JUDGMENTS_SCHEMA)).sort(["prompt_id", "key"])
