"""`rlaif run`: rounds of generate -> judge (+filter) -> train, each stage in its own process so
GPU memory is released between vLLM and training; `rlaif status`: where a run stands.

A stage whose manifest exists is skipped; an unfinished one resumes from its shards, ledger or
checkpoint. Round k > 0 samples from the SFT model plus round k-1's adapter (or, with
train.reference=previous, from the merged previous policy plus the adapter): no merge is needed
for sampling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rlaif.config import RunConfig, load_config
from rlaif.errors import UserError
from rlaif.train.policy import adapter_dir, policy_base

STAGES = ["generate", "judge", "train"]  # evaluate lands with its own issue
DONE = {"generate": "candidates.manifest.json", "judge": "pairs.card.json", "train": "train/train.manifest.json"}


class StageFailed(UserError):
    def __init__(self, stage: str, k: int, code: int) -> None:
        super().__init__(f"run: {stage} failed in round {k} (exit {code}); fix the cause and rerun "
                         "`rlaif run`: finished work is kept and resumed")
        self.exit_code = code


def done(cfg: RunConfig, k: int, stage: str) -> bool:
    return (cfg.round_dir(k) / DONE[stage]).exists()


def stage_overrides(cfg: RunConfig, k: int, stage: str) -> list[str]:
    out = [f"round={k}"]
    if stage == "generate" and k > 0:  # sample from last round's policy: its base plus its adapter
        out += [f"generate.model={policy_base(cfg, k - 1)}", f"generate.adapter={adapter_dir(cfg, k - 1).resolve()}"]
    return out


def run(cfg: RunConfig) -> Path:
    config = Path(cfg.run_dir) / "config.yaml"  # written by the CLI: the resolved config, no secrets
    if all(done(cfg, k, s) for k in range(cfg.rounds) for s in STAGES):
        print(f"run: all {cfg.rounds} rounds of {cfg.run_dir} are already done; nothing to do")
        return Path(cfg.run_dir)
    for k in range(cfg.rounds):
        for stage in STAGES:
            if done(cfg, k, stage):
                print(f"run: round {k} {stage}: done, skipped")
                continue
            print(f"run: round {k} {stage} ...", flush=True)
            cmd = [sys.executable, "-m", "rlaif", stage, "--config", str(config), *stage_overrides(cfg, k, stage)]
            code = subprocess.run(cmd, env={**os.environ, "RLAIF_RUN_CHILD": "1"}).returncode
            if code != 0:
                raise StageFailed(stage, k, code)
    print(f"run: {cfg.rounds} rounds done; the evaluate stage is not implemented yet, so the run stops after train")
    return Path(cfg.run_dir)


def _cell(cfg: RunConfig, k: int, stage: str) -> str:
    rdir = cfg.round_dir(k)
    if stage == "generate":
        if done(cfg, k, stage):
            m = json.loads((rdir / DONE[stage]).read_text())
            return f"done: {m['counts']['candidates']} cand."
        plan = rdir / "candidates" / "plan.json"
        if plan.exists():
            total = len(json.loads(plan.read_text())["shards"])
            return f"partial: {len(list((rdir / 'candidates').glob('part-*.parquet')))}/{total} shards"
    elif stage == "judge":
        if done(cfg, k, stage):
            card = json.loads((rdir / DONE[stage]).read_text())
            report = json.loads((rdir / "judge-report.json").read_text())
            pc = report.get("position_consistency")
            return f"done: {card['kept']} pairs" + (f", cons {pc:.2f}" if pc is not None else "")
        if (rdir / "judge-ledger.sqlite").exists():
            return "partial: ledger"
    elif stage == "train":
        if done(cfg, k, stage):
            m = json.loads((rdir / DONE[stage]).read_text())
            loss = m["final"].get("loss")
            return f"done: {m['steps']} steps" + (f", loss {loss:.3f}" if loss is not None else "")
        ckpts = sorted((rdir / "train").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if ckpts:
            return f"partial: {ckpts[-1].name}"
    return "missing"


def status(run_dir: str) -> int:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(path)
    rows = [[f"round {k}"] + [_cell(cfg, k, s) for s in STAGES] + ["not implemented"] for k in range(cfg.rounds)]
    header = ["", *STAGES, "evaluate"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
