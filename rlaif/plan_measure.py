"""What earlier rounds of this run measured, for `rlaif plan`: output tokens and latency per judge call
(the ledgers' rows of the same judge and template, as the Batch API admission reads them:
rlaif/judge/runner.py `_expected`), and response length and tokens/s of generation
(round-K/candidates.manifest.json, rlaif/generate/manifest.py). Read only; nothing is opened for writing.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from rlaif.judge.runner import MIN_MEASURED  # the replies the runner needs before it trusts a mean


def judge_ids(cfg) -> dict[str, str | None]:
    """judge_id of the judge and of revise.critic (the ledger's judge_id column), None where the model
    cannot be resolved here (a local model folder that is not on this machine)."""
    from rlaif.errors import UserError
    from rlaif.judge.identity import judge_id, judge_identity
    from rlaif.judge.session import judge_model_name

    out = {}
    for name, j in (("judge", cfg.judge), ("critic", cfg.revise.critic or cfg.judge)):
        try:
            model = judge_model_name(cfg.model_copy(update={"judge": j}))
            out[name] = judge_id(judge_identity(j, model))
        except (UserError, OSError):
            out[name] = None
    return out


def ledger_paths(cfg) -> list[Path]:
    paths = sorted(Path(cfg.run_dir).glob("round-*/judge-ledger.sqlite"))
    if cfg.judge.ledger and Path(cfg.judge.ledger).exists():
        paths.append(Path(cfg.judge.ledger))
    return paths


def ledger_rows(cfg) -> list[tuple]:
    """(judge_id, kind, template_version, n, sum output tokens, sum latency) of finished calls, every ledger."""
    rows = []
    for path in ledger_paths(cfg):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows += db.execute("SELECT judge_id, kind, template_version, COUNT(*), SUM(output_tokens), SUM(latency_s) "
                               "FROM calls WHERE status='done' GROUP BY judge_id, kind, template_version").fetchall()
    return rows


def per_kind(rows: list[tuple], jid: str | None, kind: str, version: str | None) -> dict | None:
    """Mean output tokens and latency of this judge's `kind` replies: on this template version when there
    are MIN_MEASURED of them, else on any version of it (a rubric edit; revise's per-principle templates)."""
    if jid is None:
        return None
    mine = [r for r in rows if r[0] == jid and r[1] == kind]
    for pick, basis in (([r for r in mine if r[2] == version], "this template"), (mine, "any template version")):
        n = sum(r[3] for r in pick)
        if n >= MIN_MEASURED:
            return {"n": n, "output_tokens": sum(r[4] or 0 for r in pick) / n,
                    "latency_s": sum(r[5] or 0 for r in pick) / n, "basis": f"measured: mean of {n} replies, {basis}"}
    return None


def generation(cfg) -> dict:
    """Mean tokens a response and tokens/s of the latest round that generated (None where none has)."""
    out = {"response_tokens": None, "tokens_per_s": None, "from": None}
    manifests = sorted(Path(cfg.run_dir).glob("round-*/candidates.manifest.json"),
                       key=lambda p: int(p.parent.name.split("-")[1]))
    if manifests:
        m = json.loads(manifests[-1].read_text())
        tokens, timing = m.get("tokens") or {}, m.get("timing") or {}
        out["response_tokens"] = tokens.get("mean_per_response") or None
        out["tokens_per_s"] = timing.get("tokens_per_s") or None
        out["from"] = manifests[-1].parent.name
    return out


def spent(ledger: Path) -> dict | None:
    """Finished calls and their cost already in one ledger: a rerun never pays for them again."""
    if not ledger.exists():
        return None
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        n, usd = db.execute("SELECT COUNT(*), SUM(cost_usd) FROM calls WHERE status='done'").fetchone()
    return {"calls": n, "cost_usd": round(usd or 0.0, 4)}
