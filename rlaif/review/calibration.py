"""The review page's calibration tab: the gold pairs where `rlaif calibrate`'s judge disagreed with people.

Read from RUN_DIR/calibration/disagreements.jsonl (rlaif/judge/trust/calibrate.py writes it, one object
per disagreeing gold pair: prompt_id, messages, response_a, response_b, human, judge, rationale) and
calibration.json beside it for the headline figures. Nothing when calibrate has not run.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlaif.errors import UserError

SUMMARY = ("judge_model", "judge_id", "template_version", "n", "agreement", "cohen_kappa", "explain", "mode",
           "created_at")


def disagreements(run_dir: Path) -> dict:
    folder = Path(run_dir) / "calibration"
    path = folder / "disagreements.jsonl"
    if not path.exists():
        return {"exists": False, "rows": [], "summary": None}
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise UserError(f"{path}: line {i}: not JSON ({e.msg}); rerun `rlaif calibrate`") from None
    try:
        cal = json.loads((folder / "calibration.json").read_text())
    except (OSError, ValueError):
        cal = None  # the list alone still says what disagreed
    summary = {k: cal.get(k) for k in SUMMARY} if isinstance(cal, dict) else None
    return {"exists": True, "rows": rows, "summary": summary}
