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

The passes of one play share one loaded model (`Sampler`): a pass cannot start before the one before it
ends (its prompts hold the earlier answers), but the weights, or vLLM's engine, need not be loaded again
for it. Evaluation plays the held-out conversations the same way (rlaif/evaluate/stage.py), its final
n=1 pass on the same Sampler.
"""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from rlaif.config import RunConfig
from rlaif.io import MESSAGES


def has_turns(prompts: pl.DataFrame) -> bool:
    """True when some row has later user turns to play."""
    return "turns" in prompts.columns and (prompts["turns"].drop_nulls().list.len().max() or 0) > 1


def play(cfg: RunConfig, prompts: pl.DataFrame, rdir: Path, tag: str, desc: str, sample,
         sampler: "Sampler | None" = None) -> pl.DataFrame:
    """prompts with each `turns` row's conversation extended by the policy's answers to all but its
    last user turn, which becomes the final message; rows without turns are returned as they were.
    A conversation whose earlier turn could not be sampled (too long for the model) is dropped, counted.
    sample: rlaif.generate.stage.sample_prompts (passed in: the stage imports this module); sampler:
    one the caller holds for a pass after these (else one for these passes, closed at the end)."""
    if not has_turns(prompts):
        return prompts
    if sampler is None:
        with Sampler() as own:
            return play(cfg, prompts, rdir, tag, desc, sample, own)
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
        sample(one, frame, out, tag=f"{tag}-turn{k}", desc=f"{desc}: turn {k} of {deepest}", sampler=sampler)
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


class Sampler:
    """One generation backend for several sampling passes under the same generate settings, loaded when a
    pass first has shards to sample (a rerun with every shard written loads nothing) and closed on exit."""

    def __init__(self) -> None:
        self.backend, self.settings = None, None

    def get(self, cfg: RunConfig, model: str):
        """(backend, seconds spent loading it now, or None when an earlier pass loaded it)."""
        settings = (model, cfg.seed, cfg.generate.model_dump_json())
        if self.backend is not None:
            if settings != self.settings:  # a caller's bug: rows must come from the settings they are keyed on
                raise RuntimeError("generate: a shared sampler was asked for other generate settings")
            return self.backend, None
        from rlaif.generate.backends import load_backend

        t0 = time.time()
        self.backend = load_backend(cfg.generate.backend, model, cfg.generate, cfg.seed)
        self.settings = settings
        return self.backend, time.time() - t0

    def close(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None and hasattr(backend, "close"):
            backend.close()  # the engine's memory back before anything else in this process loads

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


