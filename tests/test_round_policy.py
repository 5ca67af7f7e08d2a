"""A later round samples from last round's policy, found by the generate stage itself: the config every
process fingerprints is the run's, so a finished round reads as done to `rlaif run` and `rlaif status`
(a round-k process given round k's model and adapter as config keys fingerprinted earlier rounds with
them, and a finished 3-round run read as stale from round 1 on)."""
from __future__ import annotations

import polars as pl
import yaml

from conftest import ROOT, finished_adapter, rlaif_cli
from rlaif import fingerprint as FP
from rlaif.config import load_config
from rlaif.loop import stage_overrides


def test_round_2_samples_from_round_1_s_adapter_and_reads_as_done(tmp_path, tiny_model):
    run = tmp_path / "run"
    for k, seed in ((0, 1), (1, 2)):
        finished_adapter(run, k, tiny_model, seed)
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump({"run_dir": str(run), "model": str(tiny_model), "rounds": 3,
                                    "prompts": str(ROOT / "tests/assets/prompts.jsonl"),
                                    "generate": {"n": 1, "max_tokens": 4, "max_prompts": 2}}))
    cfg = load_config(str(conf), [])
    out = rlaif_cli("generate", "--config", str(conf), *stage_overrides(cfg, 2, "generate"))
    assert out.returncode == 0, out.stderr[-2000:]
    cands = pl.read_parquet(run / "round-2" / "candidates" / "*.parquet")
    assert set(cands["adapter"]) == {str((run / "round-1" / "train" / "adapter").resolve())}
    # what the stage recorded is what the loop computes for the run's config: round 2 is done
    assert FP.state(cfg, 2, "generate") == ("done", "")
    assert FP.recorded(cfg, 2, "generate")["id"] == FP.made_from(cfg, 2, "generate")["id"]
