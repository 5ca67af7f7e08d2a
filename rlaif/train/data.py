"""Pairs -> TRL's conversational preference format, with pre-flight checks that fail before
the first step, naming the problem."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.io import PAIRS_SCHEMA, read_parquet_checked


def pairs_files(cfg: RunConfig) -> list[Path]:
    rounds = range(cfg.round + 1) if cfg.run.accumulate_pairs else [cfg.round]
    files = [cfg.round_dir(k) / "pairs.parquet" for k in rounds]
    for f in files:
        if not f.exists():
            raise UserError(f"{f}: no pairs file; run `rlaif judge` for round {f.parent.name} first")
    return files


def load_pairs(cfg: RunConfig) -> tuple[pl.DataFrame, dict]:
    files = pairs_files(cfg)
    pairs = read_parquet_checked(files, PAIRS_SCHEMA, "pairs")
    where = ", ".join(str(f) for f in files)
    if pairs.is_empty():
        raise UserError(f"{where}: no pairs to train on (pairs.card.json says what each filter removed)")
    same = pairs.filter(pl.col("chosen").str.strip_chars() == pl.col("rejected").str.strip_chars())
    pairs = pairs.filter(pl.col("chosen").str.strip_chars() != pl.col("rejected").str.strip_chars())
    if pairs.is_empty():
        raise UserError(f"{where}: every pair has identical chosen and rejected responses; nothing to learn")
    # judge.meta: Meta-Rewarding's judge pairs train with the actor pairs, counted apart
    judge = sum(pl.scan_parquet(f).filter(pl.col("kind") == "judge").select(pl.len()).collect().item()
                for f in files if "kind" in pl.read_parquet_schema(f))
    return pairs, {"pairs_in": pairs.height + same.height, "identical_dropped": same.height, "judge_pairs_in": judge}


def check_tokenizer(cfg: RunConfig, tok, model_path: str) -> None:
    """Pairs sampled from a model with another tokenizer would train on ids the policy never produced."""
    if not tok.chat_template:
        raise UserError(f"model {model_path}: tokenizer has no chat template; DPO on chat pairs needs one")
    manifest = cfg.round_dir() / "candidates.manifest.json"
    if not manifest.exists():
        return
    source = json.loads(manifest.read_text()).get("model_path")
    if not source or Path(source) == Path(model_path) or not Path(source).exists():
        return
    from transformers import AutoTokenizer

    from rlaif.models import use_chat_template

    other = use_chat_template(AutoTokenizer.from_pretrained(source), cfg)
    if other.get_vocab() != tok.get_vocab() or other.chat_template != tok.chat_template:
        raise UserError(f"{manifest}: candidates came from {source}, whose tokenizer/chat template differs from "
                        f"the policy's ({model_path})")


def _tokens(tok, messages: list[dict], generation_prompt: bool = False) -> int:
    return len(tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                       return_dict=True)["input_ids"])


def drop_oldest_turns(prompt: list[dict], completions: list[list[dict]], tok, limit: int) -> list[dict]:
    """A conversation over max_length loses its oldest exchanges, whole (a user turn and the replies after
    it), keeping a leading system message and the final user turn, so the judged final turn trains whole
    after the turns nearest it (issue 23, item 3). TRL's own truncation does the opposite here: its default
    truncation_mode keep_start cuts the end of prompt+completion, the judged turn, and drops a row whose
    prompt alone fills max_length (trl 1.16 dpo_trainer.py: DataCollatorForPreference, _prepare_dataset)."""
    head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    body = prompt[len(head):]
    while max(_tokens(tok, head + body + c) for c in completions) > limit:
        nxt = next((i for i, m in enumerate(body) if i > 0 and m["role"] == "user"), None)
        if nxt is None:  # only the final user turn left: TRL cuts what still does not fit, as for one turn
            break
        body = body[nxt:]
    return head + body


def to_dataset(pairs: pl.DataFrame, tok, cfg: RunConfig):
    """TRL conversational preference rows; pairs over max_length are dropped (counted), or (overlong=truncate)
    lose their oldest turns and leave the rest to TRL's truncation; a prompt that alone fills max_length
    would be dropped silently by TRL, so it is dropped and counted here."""
    import datasets

    limit = cfg.train.max_length
    rows, over, cut = [], 0, 0
    for r in pairs.iter_rows(named=True):
        prompt = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
        row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": r["chosen"]}],
               "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        if max(_tokens(tok, prompt + row[k]) for k in ("chosen", "rejected")) > limit:
            if cfg.train.overlong == "drop":
                over += 1
                continue
            row["prompt"] = drop_oldest_turns(prompt, [row["chosen"], row["rejected"]], tok, limit)
            cut += len(row["prompt"]) < len(prompt)
            if _tokens(tok, row["prompt"], generation_prompt=True) >= limit:
                over += 1
                continue
        rows.append(row)
    if cut:
        print(f"train: {cut} conversation(s) over train.max_length={limit} lost their oldest turns "
              "(the final turn is kept whole)")
    if not rows:
        raise UserError(f"all {pairs.height} pairs are longer than train.max_length={limit} tokens; "
                        "raise it or set train.overlong=truncate")
    return datasets.Dataset.from_list(rows), over
