"""generate: sample N candidate responses per prompt into parquet shards plus a manifest.

    rlaif generate --config configs/quickstart.yaml [key=value ...]

`run(cfg)` is the stage; `sample_prompts(cfg, prompts, out_dir, tag=..., desc=...)` samples given
prompts into a folder of its own (the evaluate stage's held-out answers). Both are imported on first
use, so the backends (rlaif.generate.hf) load without the stage's polars (bench/gpu_smoke.py).
"""
__all__ = ["run", "sample_prompts"]


def __getattr__(name: str):
    if name in __all__:
        from rlaif.generate import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'rlaif.generate' has no attribute {name!r}")
