"""generate: sample N candidate responses per prompt into parquet shards plus a manifest.

    rlaif generate --config configs/quickstart.yaml [key=value ...]

`run(cfg)` is the stage; `sample_prompts(cfg, prompts, out_dir, tag=..., desc=...)` samples given
prompts into a folder of its own (the evaluate stage's held-out answers).
"""
from rlaif.generate.stage import run, sample_prompts

__all__ = ["run", "sample_prompts"]
