"""Self-played conversations (issue 23, item 4): a prompt row with a `turns` column (a list of user
messages, as MT-Bench's question files have) is played out by the sampling policy before the round
samples its candidates. The policy answers turn 1; turn 2 is asked after its own turn-1 answer; and so
on up to the last user turn, which is the one the round samples N candidates for and the judge
compares. So the candidates share the earlier turns and differ in the final one, and every earlier
assistant turn is the policy's own (the MT-Bench setting: turn 2 is judged after the model's turn 1).

Each earlier turn is one sampling pass with n=1 at generate.temperature (greedy at 0), seeded per
prompt like generation itself, written to round-K/turns/turn-J/ as a resumable, fingerprinted set of
candidate shards (rlaif.generate.stage.sample_prompts): a kill -9 mid-conversation, then a rerun,
samples only what is missing and gives the same conversations. The played turns are recorded there
(candidates.manifest.json, the shards) and in every candidate's `messages`.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.io import MESSAGES


def play(cfg: RunConfig, prompts: pl.DataFrame, rdir: Path, tag: str, desc: str, sample) -> pl.DataFrame:
    """prompts with each `turns` row's conversation extended by the policy's answers to all but its
    last user turn, which becomes the final message; rows without turns are returned as they were.
    A conversation whose earlier turn could not be sampled (too long for the model) is dropped, counted.
    sample: rlaif.generate.stage.sample_prompts (passed in: the stage imports this module)."""
    if "turns" not in prompts.columns or prompts["turns"].drop_nulls().list.len().max() in (None, 0, 1):
        return prompts
    ids = prompts["prompt_id"].to_list()
    chats = dict(zip(ids, prompts["messages"].to_list()))
    turns = dict(zip(ids, prompts["turns"].to_list()))
    one = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={
        "n": 1, "max_prompts": None, "worker": None, "data_parallel_size": 1})})
    dropped: set[str] = set()
    deepest = max(len(t) for t in turns.values() if t)
    for k in range(1, deepest):  # k user turns asked so far; their last one is answered now
        asked = [p for p in ids if turns[p] and len(turns[p]) > k and p not in dropped]
        frame = pl.DataFrame({"prompt_id": asked, "messages": [chats[p] for p in asked]},
                             schema={"prompt_id": pl.String, "messages": MESSAGES})
        out = rdir / "turns" / f"turn-{k}"
        sample(one, frame, out, tag=f"{tag}-turn{k}", desc=f"{desc}: turn {k} of {deepest}")
        answers = answered(out)
        for p in asked:
            if p not in answers:
                dropped.add(p)
                continue
            chats[p] = [*chats[p], {"role": "assistant", "content": answers[p]},
                        {"role": "user", "content": turns[p][k]}]
    if dropped:
        print(f"{desc}: {len(dropped)} conversation(s) dropped: an earlier turn did not fit the model "
              f"(see {rdir / 'turns'}/turn-*/candidates.manifest.json)")
    kept = [p for p in ids if p not in dropped]
    return (prompts.filter(pl.col("prompt_id").is_in(kept))
            .with_columns(pl.Series("messages", [chats[p] for p in kept], dtype=MESSAGES)))


def answered(out: Path) -> dict[str, str]:
    """prompt_id -> the one sampled answer in a turn folder's candidate shards."""
    parts = sorted((out / "candidates").glob("part-*.parquet"))
    if not parts:
        return {}
    df = pl.concat([pl.read_parquet(p, columns=["prompt_id", "response"]) for p in parts])
    return dict(zip(df["prompt_id"].to_list(), df["response"].to_list()))
