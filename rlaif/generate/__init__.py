"""generate: sample N candidate responses per prompt into parquet shards plus a manifest.

    rlaif generate --config configs/quickstart.yaml [key=value ...]
"""
from rlaif.generate.stage import run

__all__ = ["run"]
