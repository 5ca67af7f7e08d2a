"""Gold pairs for `rlaif calibrate`: human-labelled (prompt, response_a, response_b, human) rows.

A gold file is JSONL, parquet, CSV (chat lists as JSON strings) or a saved Hugging Face dataset
folder with `prompt_id` (optional, need not be unique: `rlaif review --export` repeats it, so rows
are keyed by their position), `messages` or `prompt`, `response_a`, `response_b` and `human` in
a|b|tie. The `calibrate` config section maps other names, so public sets load as they are:

    calibrate:   # Chatbot Arena / MT-Bench human judgments (single-turn rows)
      columns: {response_a: conversation_a, response_b: conversation_b, human: winner}
      human_values: {model_a: a, model_b: b, tie: tie, "tie (bothbad)": tie}
    calibrate:   # Stanford Human Preferences (SHP): labels 1 means A is preferred
      columns: {prompt: history, response_a: human_ref_A, response_b: human_ref_B, human: labels}
      human_values: {1: a, 0: b}
    calibrate:   # chosen/rejected sets without a label column (UltraFeedback binarized)
      columns: {response_a: chosen, response_b: rejected, messages: null}
      a_is_preferred: true

A response may be a chat list ending with the assistant's reply (Arena's conversation_a,
UltraFeedback's chosen): that reply is judged, and without a messages/prompt column the messages
before it are the prompt (the same on both sides). Bad rows fail before any judge call, with one
line naming the file, the row and the field.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from rlaif.config import CalibrateConfig
from rlaif.errors import UserError
from rlaif.io import MESSAGES, stable_id
from rlaif.prompts import parse_messages, read_rows

HUMAN = ("a", "b", "tie")
GOLD_SCHEMA = pl.Schema({"row": pl.Int64, "where": pl.String, "prompt_id": pl.String, "messages": MESSAGES,
                         "response_a": pl.String, "response_b": pl.String, "human": pl.String})


def _col(c: CalibrateConfig, field: str) -> str | None:
    """The file's column for an rlaif field; None: ignore it (e.g. UltraFeedback's messages, which end
    with the chosen reply)."""
    return c.columns.get(field, field)


def _field(c: CalibrateConfig, field: str) -> str:
    """How an error names a field: the file's column, and rlaif's name when they differ."""
    col = _col(c, field)
    return col if col in (field, None) else f"{col} ({field})"


def _response(raw, where: str, name: str, csv: bool) -> tuple[str, list | None]:
    """(text, the chat before it or None): a string, or a chat list ending with the assistant's reply."""
    if csv and isinstance(raw, str) and raw.lstrip().startswith("[{"):  # CSV carries chat lists as JSON text
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, list) and all(isinstance(m, dict) and "role" in m for m in decoded):
            raw = decoded
    if isinstance(raw, list):
        if not raw or not isinstance(raw[-1], dict) or raw[-1].get("role") != "assistant":
            raise UserError(f"{where}: field {name}: a chat list must end with the assistant's reply")
        text = raw[-1].get("content")
        before = parse_messages(raw[:-1], f"{where}: field {name}") if len(raw) > 1 else None
    else:
        text, before = raw, None
    if not isinstance(text, str) or not text.strip():
        got = f", got {type(text).__name__}" if text is not None and not isinstance(text, str) else ""
        raise UserError(f"{where}: field {name}: expected a non-empty string{got}")
    return text, before


def _human(c: CalibrateConfig, row: dict, where: str, swap: bool) -> str:
    if c.a_is_preferred:
        return "b" if swap else "a"
    name = _field(c, "human")
    if _col(c, "human") not in row:
        raise UserError(f"{where}: no field {name} (columns: {', '.join(row)}); map it with calibrate.columns.human, "
                        "or set calibrate.a_is_preferred for chosen/rejected sets")
    raw = row[_col(c, "human")]
    key = str(raw).strip() if raw is not None else ""
    label = c.human_values.get(key) or (key.lower() if key.lower() in HUMAN else None)
    if label is None:
        raise UserError(f"{where}: field {name}: {raw!r} is not a, b or tie; map the file's labels with "
                        "calibrate.human_values, e.g. {model_a: a, model_b: b}")
    return {"a": "b", "b": "a", "tie": "tie"}[label] if swap else label


def _prompt(c: CalibrateConfig, row: dict, where: str, before: tuple) -> list[dict]:
    msgs, prompt = row.get(_col(c, "messages")), row.get(_col(c, "prompt"))
    if msgs is not None:
        col = _col(c, "messages")
        return parse_messages(msgs, where if col == "messages" else f"{where} (column {col})")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: field {_field(c, 'prompt')}: expected a non-empty string")
        return [{"role": "user", "content": prompt}]
    a, b = before
    if a is not None or b is not None:
        if a != b:
            raise UserError(f"{where}: fields {_field(c, 'response_a')} and {_field(c, 'response_b')}: the "
                            "conversations differ before the last reply; only single-answer pairs can be judged")
        return a
    raise UserError(f"{where}: no {_field(c, 'messages')} or {_field(c, 'prompt')} field (columns: {', '.join(row)}); "
                    "map one with calibrate.columns")


def gold_row(c: CalibrateConfig, row: dict, where: str, csv: bool = False) -> dict:
    """One gold row in rlaif's terms, or a UserError naming the field."""
    texts, befores = [], []
    for side in ("response_a", "response_b"):
        if row.get(_col(c, side)) is None:
            raise UserError(f"{where}: no field {_field(c, side)} (columns: {', '.join(row) or 'none'}); "
                            f"map it with calibrate.columns.{side}")
        t, before = _response(row[_col(c, side)], where, _field(c, side), csv)
        texts.append(t)
        befores.append(before)
    chat = _prompt(c, row, where, tuple(befores))
    # a_is_preferred: swap a fixed half (by content hash, not by position) so a and b each win about half
    swap = c.a_is_preferred and int(stable_id(texts, 8), 16) % 2 == 1
    human = _human(c, row, where, swap)
    a, b = (texts[1], texts[0]) if swap else (texts[0], texts[1])
    pid = row.get(_col(c, "prompt_id"))
    pid = str(pid) if pid is not None and str(pid).strip() else stable_id(chat)
    return {"prompt_id": pid, "messages": chat, "response_a": a, "response_b": b, "human": human}


def read_gold(c: CalibrateConfig) -> pl.DataFrame:
    """The gold file as GOLD_SCHEMA rows (row: 1-based position; where: file and line/row, for messages)."""
    if not c.gold:
        raise UserError("calibrate: no gold file; give gold=PATH (or calibrate.gold in the config)")
    path = Path(c.gold)
    try:
        rows = read_rows(path, c.split, what="gold")
    except UserError as e:  # the shared reader names the prompts' key
        raise UserError(str(e).replace("set prompts_split", "set calibrate.split")) from None
    if c.max_rows:
        rows = rows[:c.max_rows]
    if not rows:
        raise UserError(f"{path}: gold file has no rows")
    csv = path.suffix.lower() == ".csv"
    out = [{"row": i, "where": f"{path}: {where}", **gold_row(c, r, f"{path}: {where}", csv)}
           for i, (where, r) in enumerate(rows, 1)]
    return pl.DataFrame(out, schema=GOLD_SCHEMA)
