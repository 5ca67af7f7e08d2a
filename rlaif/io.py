"""Files are the only contract between stages: atomic writes, schema-checked parquet (prompt loading: rlaif/prompts.py).

Every output is written to a temporary name in the same folder, fsynced, then `os.replace`d
into place, so a crash leaves either the old file or the whole new one, never a truncated one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from rlaif.errors import UserError

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))

CANDIDATES_SCHEMA = pl.Schema({
    "prompt_id": pl.String,
    "candidate_id": pl.String,
    "round": pl.Int32,
    "messages": MESSAGES,
    "response": pl.String,
    "num_tokens": pl.Int32,
    "finish_reason": pl.String,
    "model": pl.String,
    "adapter": pl.String,
    "seed": pl.Int64,
})

# One row per judge call outcome. `verdict` names a candidate, not a slot: "a" means a_id won,
# whichever order it was shown in. Score calls (SINGLE_KINDS) judge a_id alone: verdict "score"
# (score, reward and verify: score_a the rubric score, the reward or the share of checks passed) or
# "yes"/"no" (checklist: score_a = P(yes), `item` the question), or "invalid"; b_id and order are
# null for them.
SINGLE_KINDS = ("score", "checklist", "reward", "verify")  # the kinds of calls that judge one answer alone
JUDGMENTS_SCHEMA = pl.Schema({
    "key": pl.String,
    "prompt_id": pl.String,
    "kind": pl.String,  # pairwise | score
    "a_id": pl.String,
    "b_id": pl.String,
    "order": pl.String,  # ab (a_id shown first) | ba | null
    "verdict": pl.String,  # a | b | tie | invalid | score
    "score_a": pl.Float64,
    "score_b": pl.Float64,
    "p_a": pl.Float64,  # P(a_id wins) from logprobs, when the backend gives them
    "grade": pl.Float64,  # graded verdicts: -2..2 from a_id's view (2: a much better), expected when logits give it
    "item": pl.String,  # checklist calls: the item's id ("0", "1", ... or "p0"... for a per-prompt checklist)
    "rationale": pl.String,  # judge.explain: the judge's reasoning before its final verdict line
    "judge_id": pl.String,  # short hash of the judge identity (model, endpoint, style, ...)
    "judge_model": pl.String,
    "template_version": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "latency_s": pl.Float64,
    "error": pl.String,
    "raw": pl.String,  # the judge's raw reply, kept for audit (invalid ones above all)
})
# What the report and the filter read of judgments.parquet: all but the texts, which are most of a
# row's size and are read lazily where a few are shown (rationale samples).
JUDGMENTS_NARROW = [c for c in JUDGMENTS_SCHEMA if c not in ("rationale", "raw")]

PAIRS_SCHEMA = pl.Schema({
    "prompt_id": pl.String,
    "messages": MESSAGES,
    "chosen": pl.String,
    "rejected": pl.String,
    "chosen_id": pl.String,
    "rejected_id": pl.String,
    "margin": pl.Float64,
    "consistent": pl.Boolean,
    "chosen_tokens": pl.Int32,
    "rejected_tokens": pl.Int32,
    "round": pl.Int32,
})

ROLES = ("system", "user", "assistant")
UMASK = os.umask(0o022)
os.umask(UMASK)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then move the finished file over `path` (fsync'd both ways)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def json_object(path: Path) -> dict:
    """A JSON object file as a dict; {} when it is missing, unreadable or not an object (readers of a
    run folder that show what is there)."""
    try:
        obj = json.loads(Path(path).read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: str | Path, df: pl.DataFrame, schema: pl.Schema | None = None) -> Path:
    if schema is not None:
        df = df.select([pl.col(k).cast(v) for k, v in schema.items()])
    return atomic_write(path, lambda p: df.write_parquet(p))


def write_parquet_chunks(path: str | Path, frames, schema: pl.Schema) -> int:
    """Write an iterable of frames as one parquet file, a row group each, holding one frame at a
    time (judgments at scale: issue 22, item 5); atomic like write_parquet. Returns the row count."""
    import pyarrow.parquet as pq

    arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as w:
            for df in frames:
                w.write_table(df.select([pl.col(k).cast(v) for k, v in schema.items()]).to_arrow().cast(arrow_schema))
                rows += df.height
            if not rows:  # an empty file still has the schema (and one empty row group, as polars writes)
                w.write_table(arrow_schema.empty_table())

    atomic_write(path, write)
    return rows


def read_parquet_checked(paths: list[Path] | Path, schema: pl.Schema, what: str,
                         columns: list[str] | None = None) -> pl.DataFrame:
    """Read parquet file(s) and fail loudly, naming the file, if a declared column is missing.
    columns: read only these (the rest are still checked to exist), e.g. judgments without texts."""
    paths = [paths] if isinstance(paths, Path) else paths
    want = {k: v for k, v in schema.items() if columns is None or k in columns}
    frames = []
    for p in paths:
        try:
            have = pl.read_parquet_schema(p)
            missing = [c for c in schema if c not in have]
            if missing:
                raise UserError(f"{p}: not a {what} file: missing column(s) {', '.join(missing)}")
            df = pl.read_parquet(p, columns=list(want))
        except (pl.exceptions.PolarsError, OSError) as e:
            raise UserError(f"{p}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
        frames.append(df.select([pl.col(k).cast(v) for k, v in want.items()]))
    return pl.concat(frames) if frames else pl.DataFrame(schema=want)


def scan_parquet_checked(paths: list[Path] | Path, schema: pl.Schema, what: str,
                         columns: list[str] | None = None) -> pl.LazyFrame:
    """read_parquet_checked as a lazy scan, for polars' streaming engine (issue 22, item 5): the
    same columns checked now, cast to the schema, rows in the same order when collected. Files of
    one schema are one multi-file scan: a concat of a scan per file holds memory per file (a round's
    candidates are thousands of 64-prompt shards)."""
    paths = [paths] if isinstance(paths, Path) else paths
    want = {k: v for k, v in schema.items() if columns is None or k in columns}
    groups: list[tuple[pl.Schema, list[Path]]] = []  # runs of files with the same schema, in order
    for p in paths:
        try:
            have = pl.read_parquet_schema(p)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise UserError(f"{p}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
        missing = [c for c in schema if c not in have]
        if missing:
            raise UserError(f"{p}: not a {what} file: missing column(s) {', '.join(missing)}")
        if groups and groups[-1][0] == have:
            groups[-1][1].append(p)
        else:
            groups.append((have, [p]))
    scans = [pl.scan_parquet(ps, glob=False).select([pl.col(k).cast(v) for k, v in want.items()]) for _, ps in groups]
    return pl.concat(scans) if scans else pl.LazyFrame(schema=want)


def stable_id(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:n]
