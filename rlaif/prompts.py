"""Prompt sets as they come (issue 23, item 1): read into (prompt_id, messages), every error naming
the file, the row and the field.

    read_prompts("data/", split="train", columns={"prompt": "instruction"}, dedup="first")

A prompt set is a JSONL, parquet or CSV file; a folder of parquet/JSONL shards, either in the
Hugging Face Hub layout (`data/train-00000-of-00002.parquet`: the split is the name's prefix) or
plain (every `*.parquet`/`*.jsonl`), read in sorted name order; or a folder saved by `datasets`
(`save_to_disk`). `columns` maps rlaif's fields to the file's columns (calibrate.columns' style;
null ignores a column). A missing prompt_id is a sha256 of the conversation, so it is the same in
every run and however the rows are cut into shards.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from rlaif.errors import UserError
from rlaif.models import with_system

from rlaif.io import MESSAGES, ROLES, stable_id

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, as Windows tools write it; datasets and pandas accept it
SHARD_SUFFIXES = (".parquet", ".jsonl")
HF_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  # what `save_to_disk` leaves
HUB_NAME = re.compile(r"^[^-]+-\d+-of-\d+\.(parquet|jsonl)$")  # train-00000-of-00002.parquet
# The split words the Hub recognises in file names (datasets/data_files.py, SPLIT_KEYWORDS)
SPLIT_WORDS = {"train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation"}


# ---------------------------------------------------------------- files -> rows

def _utf8(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw.count(b"\n", 0, e.start)  # raw may hold many lines (a whole CSV file)
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{path}: line {line}: byte 0x{raw[e.start]:02x} at column {col} is not UTF-8; "
                        "save the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            line = _utf8(raw[len(BOM):] if i == 1 and raw.startswith(BOM) else raw, path, i)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}: line {i}: expected a JSON object")
            rows.append((f"line {i}", obj))
    return rows


def _read_file(path: Path) -> list[tuple[str, dict]]:
    """(where, row) of one JSONL, parquet or CSV file; where is "line N" (JSONL) or "row N"."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    try:
        if suffix == ".parquet":
            rows = pl.read_parquet(path).to_dicts()
        elif suffix == ".csv":
            _utf8(path.read_bytes(), path, 1)  # polars says only "invalid utf-8 sequence"; this names the line
            rows = pl.read_csv(path, infer_schema=False).to_dicts()  # polars drops a leading BOM itself
        else:
            raise UserError(f"{path}: unknown prompts format {suffix!r}; use .jsonl, .parquet, .csv, a folder "
                            "of .parquet/.jsonl shards or a saved HF dataset folder")
    except pl.exceptions.PolarsError as e:
        raise UserError(f"{path}: cannot read as {suffix[1:]}: {str(e).splitlines()[0]}") from None
    return [(f"row {i}", r) for i, r in enumerate(rows, 1)]


def _read_saved(path: Path, split: str) -> list[tuple[str, dict]]:
    """A folder written by `datasets` save_to_disk (a Dataset, or a DatasetDict and its split)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split {split!r} (has {', '.join(ds)}); set prompts_split")
        ds = ds[split]
    return [(f"row {i}", r) for i, r in enumerate(ds.to_list(), 1)]


def shard_files(folder: Path, split: str) -> list[Path]:
    """A folder's shards, in sorted name order: data/*.parquet|jsonl if there is a data/, else the
    folder's own. Named by split, as the Hub names them (train-00000-of-00002.parquet: a known split
    word or the Hub's -NNNNN-of-NNNNN before the suffix), only the split's files are read; a plain
    folder of shards is read whole."""
    base = folder / "data" if (folder / "data").is_dir() else folder
    files = sorted(f for f in base.iterdir() if f.is_file() and f.suffix.lower() in SHARD_SUFFIXES)
    if not files:
        raise UserError(f"{base}: a folder with no .parquet or .jsonl shards, and not a saved Hugging Face "
                        "dataset (no dataset_info.json)")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(f.name.split("-", 1)[0] if "-" in f.name else "", []).append(f)
    if not any(name in SPLIT_WORDS or HUB_NAME.match(f.name) for name, fs in by_split.items() for f in fs):
        return files  # a plain folder of shards
    if split not in by_split:
        raise UserError(f"{base}: no {split!r} shards (has {', '.join(sorted(n for n in by_split if n))}); "
                        "set prompts_split")
    return by_split[split]


def read_rows(path: str | Path, split: str = "train", what: str = "prompts") -> list[tuple[str, dict]]:
    """(where, row) for each row of a JSONL, parquet or CSV file, a folder of shards or a saved HF
    dataset folder. where is "line N" (JSONL) or "row N", led by the shard's name inside a folder
    ("data/train-00001-of-00002.parquet: row 3"): the reader read_prompts uses, for other row files (gold pairs)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} file not found")
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"{path}: {what} file is empty")
        return _read_file(path)
    if any((path / f).exists() for f in HF_SAVED):
        return _read_saved(path, split)
    return [(f"{shard.relative_to(path)}: {where}", row)
            for shard in shard_files(path, split) for where, row in _read_file(shard)]


# ---------------------------------------------------------------- one row's fields

def _text_parts(parts: list, field: str) -> str:
    """OpenAI's list-of-parts content ([{"type": "text", "text": ...}]) as one string: the text parts
    joined by a newline, as vLLM's OpenAI server joins them (vllm/entrypoints/chat_utils.py). rlaif's
    models read text only, so an image, audio or file part is an error, not silently dropped."""
    texts = []
    for n, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = f"type {kind!r}" if kind else f"a {type(part).__name__}, not a {{type, text}} object"
            raise UserError(f"{field}[{n}]: {what}; only text parts are supported")
        if not isinstance(part.get("text"), str):
            raise UserError(f"{field}[{n}].text: expected a string")
        texts.append(part["text"])
    if not texts:
        raise UserError(f"{field}: an empty list of parts")
    return "\n".join(texts)


def _messages(raw: Any, where: str, name: str = "messages") -> list[dict]:
    if isinstance(raw, str):  # CSV carries the chat list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise UserError(f"{where}: field {name}: not a JSON chat list") from None
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: field {name}: expected a non-empty list of {{role, content}}")
    out = []
    for j, m in enumerate(raw):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise UserError(f"{where}: field {name}[{j}]: expected exactly the keys role and content")
        if m["role"] not in ROLES:
            raise UserError(f"{where}: field {name}[{j}].role: {m['role']!r} is not one of {', '.join(ROLES)}")
        content = m["content"]
        if isinstance(content, list):
            content = _text_parts(content, f"{where}: field {name}[{j}].content")
        if not isinstance(content, str):
            raise UserError(f"{where}: field {name}[{j}].content: expected a string, got {type(content).__name__}")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] == "assistant":
        raise UserError(f"{where}: field {name}: the last message is the assistant's; nothing left to answer")
    return out


def parse_messages(raw: Any, where: str) -> list[dict]:
    """A chat list checked as prompts' messages are (roles, text parts, not ending with the assistant)."""
    return _messages(raw, where)


def _turns(raw: Any, where: str, name: str) -> list[str]:
    """A `turns` value (MT-Bench's question files): a non-empty list of user messages."""
    if isinstance(raw, str) and raw.lstrip().startswith("["):  # CSV: a JSON list
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise UserError(f"{where}: field {name}: not a JSON list of strings") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t.strip() for t in raw):
        raise UserError(f"{where}: field {name}: expected a non-empty list of non-empty strings")
    return list(raw)


def _field(columns: dict, field: str) -> str:
    """How an error names a field: the file's column, and rlaif's name when they differ."""
    col = columns.get(field, field)
    return col if col in (field, None) else f"{col} ({field})"


def _chat(row: dict, where: str, columns: dict) -> tuple[list[dict], list[str] | None]:
    """(the conversation, the turns or None) of one row, its own system column first."""
    def get(field):
        col = columns.get(field, field)
        return (col is not None and col in row), (row.get(col) if col is not None else None)

    (has_m, msgs), (has_p, prompt), (_, turns) = get("messages"), get("prompt"), get("turns")
    turns = _turns(turns, where, _field(columns, "turns")) if turns is not None else None
    if msgs is not None:
        chat = _messages(msgs, where, columns.get("messages") or "messages")
    elif prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: field {_field(columns, 'prompt')}: expected a non-empty string")
        chat = [{"role": "user", "content": prompt}]
    elif turns is not None:  # a conversation to play out (issue 23, item 4): its first user turn
        chat = [{"role": "user", "content": turns[0]}]
    elif has_m or has_p:
        raise UserError(f"{where}: field {_field(columns, 'messages' if has_m else 'prompt')}: empty")
    else:
        names = " or ".join(_field(columns, f) for f in ("messages", "prompt") if columns.get(f, f) is not None)
        raise UserError(f"{where}: no {names or 'messages or prompt'} field (columns: {', '.join(row) or 'none'}); "
                        "map one with prompts_columns")
    _, system = get("system")
    if isinstance(system, str) and not system.strip():
        system = None  # Hub sets often carry "" for "no system prompt"
    if system is not None:
        if not isinstance(system, str):
            raise UserError(f"{where}: field {_field(columns, 'system')}: expected a string, got {type(system).__name__}")
        if chat[0]["role"] != "system":  # the conversation's own system turn wins
            chat = [{"role": "system", "content": system}, *chat]
    return chat, turns


# ---------------------------------------------------------------- rows -> prompts

def _walk(path: str | Path, split: str, columns: dict, dedup: str) -> tuple[list[tuple], int, int]:
    """The row walk read_prompts and prompt_data share: ([(where, row, prompt_id, chat, turns)] of the
    rows kept, rows read, ids derived). dedup "first" keeps the first row of a repeated prompt_id
    (given or derived); "error" refuses it."""
    path = Path(path)
    rows = read_rows(path, split)
    if not rows:
        raise UserError(f"{path}: prompts {'folder' if path.is_dir() else 'file'} has no rows")
    id_col = columns.get("prompt_id", "prompt_id")
    out, seen, derived = [], {}, 0
    for where, row in rows:
        where = f"{path}: {where}"
        chat, turns = _chat(row, where, columns)
        pid = row.get(id_col) if id_col is not None else None
        if pid is None or (isinstance(pid, str) and not pid.strip()):
            if id_col is not None and id_col in row:
                raise UserError(f"{where}: field {_field(columns, 'prompt_id')}: empty")
            # sha256 of the conversation (and of the turns to play): stable across runs and shard cuts
            pid = stable_id(chat if turns is None else {"messages": chat, "turns": turns})
        pid = str(pid)
        if pid in seen:
            if dedup == "first":
                continue
            raise UserError(f"{where}: field {_field(columns, 'prompt_id')}: duplicate {pid!r} (first at "
                            f"{seen[pid]})" + ("" if id_col in row else "; the same prompt appears twice")
                            + "; prompts_dedup=first keeps the first")
        seen[pid] = where.split(": ", 1)[1]
        derived += id_col is None or id_col not in row
        out.append((where, row, pid, chat, turns))
    return out, len(rows), derived


def read_prompts_counted(path: str | Path, split: str = "train", columns: dict | None = None,
                         dedup: str = "error", system_prompt: str | None = None) -> tuple[pl.DataFrame, dict]:
    """(prompts, {"rows", "duplicates_dropped", "ids_derived"}). Prompts: prompt_id, messages and,
    when a row has one, turns (null elsewhere). dedup "first" keeps the first row of a repeated
    prompt_id (given or derived); "error" refuses it. system_prompt goes first in every conversation
    without a system turn, after the id is derived (the id names the prompt, whatever the run's
    system prompt)."""
    # columns' field names are checked where the config loads (rlaif.config.PROMPT_FIELDS)
    out, n_rows, derived = _walk(path, split, columns or {}, dedup)
    chats = with_system([c for *_, c, _ in out], system_prompt)
    data = {"prompt_id": [p for _, _, p, _, _ in out], "messages": chats}
    schema = {"prompt_id": pl.String, "messages": MESSAGES}
    if any(t is not None for *_, t in out):  # only then: other prompt sets keep today's two columns
        data["turns"], schema["turns"] = [t for *_, t in out], pl.List(pl.String)
    counts = {"rows": n_rows, "duplicates_dropped": n_rows - len(out), "ids_derived": derived}
    return pl.DataFrame(data, schema=schema), counts


def read_prompts(path: str | Path, split: str = "train", columns: dict | None = None, dedup: str = "error",
                 system_prompt: str | None = None) -> pl.DataFrame:
    """Load prompts into (prompt_id, messages[, turns]); every error names the file, row and field."""
    return read_prompts_counted(path, split, columns, dedup, system_prompt)[0]


# ---------------------------------------------------------------- check data (issue 24)

def _tests(raw: Any, where: str, name: str) -> list | None:
    """A `tests` value: a list of Python snippets (asserts run after the program) and/or {stdin, stdout}
    cases; a JSON string holding such a list (CSV, or a parquet column that mixes the two) is read.
    Null, "" and [] mean no tests."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise UserError(f"{where}: field {name}: not a JSON list of tests") from None
    if raw is None or (isinstance(raw, list) and not raw):
        return None
    if not isinstance(raw, list):
        raise UserError(f"{where}: field {name}: expected a list of tests, got {type(raw).__name__}")
    for j, t in enumerate(raw):
        if isinstance(t, str) and t.strip():
            continue
        if not (isinstance(t, dict) and set(t) == {"stdin", "stdout"}
                and all(isinstance(v, str) for v in t.values())):
            raise UserError(f"{where}: field {name}[{j}]: expected Python source (a non-empty string) or "
                            "{\"stdin\": str, \"stdout\": str}")
    return [t if isinstance(t, str) else {"stdin": t["stdin"], "stdout": t["stdout"]} for t in raw]


def _reference(raw: Any, where: str, name: str) -> str | None:
    """A `reference` value: a string, or a number kept as its string (42 -> "42")."""
    if isinstance(raw, bool) or not (raw is None or isinstance(raw, (str, int, float))):
        raise UserError(f"{where}: field {name}: expected a string or a number, got {type(raw).__name__}")
    return None if raw is None or not str(raw).strip() else str(raw)


def prompt_data(path: str | Path, split: str = "train", columns: dict | None = None,
                dedup: str = "error") -> dict[str, dict]:
    """prompt_id -> {"tests": list | None, "reference": str | None}: what the checks that can be run
    (judge.backend=verifier, evaluate.checks' tests and reference kinds) compare a reply with, for the
    same ids read_prompts gives (derived ids included). A row without the fields gets None."""
    columns = columns or {}
    out, _, _ = _walk(path, split, columns, dedup)
    data = {}
    for where, row, pid, _, _ in out:
        got = {}
        for field, parse in (("tests", _tests), ("reference", _reference)):
            col = columns.get(field, field)
            got[field] = parse(row.get(col), where, _field(columns, field)) if col is not None else None
        data[pid] = got
    return data


def prompt_args(cfg, heldout: bool = False) -> tuple:
    """read_prompts' arguments as the config sets them: the training prompts, or (heldout)
    evaluate's; both get generate.system_prompt, as generation and evaluation answers do."""
    s = cfg.evaluate if heldout else cfg
    return s.prompts, s.prompts_split, s.prompts_columns, s.prompts_dedup, cfg.generate.system_prompt
