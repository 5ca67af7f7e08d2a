"""Reward-model judge: a local sequence-classification model scores each candidate with one scalar.

    rlaif judge --config configs/quickstart.yaml judge.backend=reward_model judge.model=/path/to/reward-model

The folder is a Hugging Face `...ForSequenceClassification` checkpoint with a one-output head (the
`score` linear layer of transformers' GenericForSequenceClassification on a decoder: the layout of
Skywork-Reward and RLHFlow's Bradley-Terry reward models, and what TRL's RewardTrainer saves). Each
candidate is scored as the conversation plus its assistant turn, rendered by the reward model's OWN
chat template (a reward model is trained on its template; the policy's would shift its inputs). The stage turns
rewards into pairs (best vs worst by reward); this file only answers `kind == "reward"` calls.

Where vLLM is installed, the candidates are scored by vLLM's pooling runner (`LLM.classify` with the raw
score, no activation) in one engine queue per batch; elsewhere by transformers. Both pool at the same
token (see _pool_end), so they give the same rewards (tests/test_judge_vllm.py).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from itertools import islice
from pathlib import Path

from rlaif.config import JudgeConfig
from rlaif.errors import UserError
from rlaif.judge.backends import Call, Reply
from rlaif.judge.backends.vllm_judge import CHUNK
from rlaif.models import default_dtype


def _check_folder(model: str) -> dict:
    """The config of a reward-model folder, or one line saying why it is not one."""
    p = Path(model)
    if not (p / "config.json").is_file():
        what = "no config.json" if p.is_dir() else "no such folder"
        raise UserError(f"judge.model {model}: {what} (judge.backend=reward_model needs a local "
                        "sequence-classification reward model folder)")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"judge.model {model}: config.json unreadable ({e})") from None
    arch = (cfg.get("architectures") or [""])[0]
    if arch and not arch.endswith("ForSequenceClassification"):
        raise UserError(f"judge.model {model}: a {arch}, not a reward model (judge.backend=reward_model needs "
                        "a ...ForSequenceClassification checkpoint with a one-output score head)")
    return cfg


def _load(model: str):
    """(tokenizer, model) of a reward-model folder, or one line saying why it is not one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _check_folder(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its table of missing keys is replaced by the one line below
    try:
        tok = AutoTokenizer.from_pretrained(model)
        net, info = AutoModelForSequenceClassification.from_pretrained(
            model, num_labels=1, dtype=default_dtype(), output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"judge.model {model}: cannot load as a reward model: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # transformers initialises absent or mis-shaped weights at random and only warns: a causal LM
    # folder loaded this way "works" and scores noise.
    if info["mismatched_keys"]:
        key, shape, _ = sorted(info["mismatched_keys"])[0]
        raise UserError(f"judge.model {model}: {key} has shape {list(shape)} in the checkpoint; "
                        "a reward model's head has one output")
    if info["missing_keys"]:
        keys = ", ".join(sorted(info["missing_keys"])[:3])
        raise UserError(f"judge.model {model}: not a trained reward model: {keys} missing from the checkpoint "
                        "(transformers would initialise it at random)")
    if not tok.chat_template:
        raise UserError(f"judge.model {model}: its tokenizer has no chat template to render conversations with")
    return tok, net


def _load_vllm(model: str, cfg: JudgeConfig):
    """(tokenizer, vllm.LLM) of a reward-model folder: vLLM's pooling runner with the checkpoint's own head."""
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.platforms import current_platform

    conf = _check_folder(model)
    if len(conf.get("id2label") or {0: ""}) != 1:
        raise UserError(f"judge.model {model}: a reward model's head has one output, this config has "
                        f"{len(conf['id2label'])} labels")
    tok = AutoTokenizer.from_pretrained(model)
    if not tok.chat_template:
        raise UserError(f"judge.model {model}: its tokenizer has no chat template to render conversations with")
    kwargs = dict(model=model, tokenizer=model, runner="pooling", seed=0,
                  gpu_memory_utilization=cfg.gpu_memory_utilization)
    if current_platform.is_cpu():  # as the vLLM judge (rlaif/judge/backends/vllm_judge.py, engine_args)
        kwargs.update(dtype="float32", enforce_eager=True)
    kwargs.update(cfg.engine_args)
    try:
        return tok, LLM(**kwargs)
    except (OSError, ValueError, RuntimeError) as e:  # vLLM refuses a checkpoint whose weights are missing
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"judge.model {model}: vLLM cannot load it as a reward model: {first}") from None


class RewardModelJudge:
    def __init__(self, cfg: JudgeConfig, model: str, **_) -> None:
        import torch

        self.cfg, self.path = cfg, model
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.llm = None
        if importlib.util.find_spec("vllm") is not None:
            self.tok, self.llm = _load_vllm(model, cfg)
            conf = self.llm.llm_engine.model_config.hf_config
            self.limit = min(cfg.max_input_tokens, self.llm.llm_engine.model_config.max_model_len)
            self.pad = conf.get_text_config().pad_token_id
            print(f"judge: reward model {model} loaded in vLLM's pooling runner", file=sys.stderr)
            return
        self.tok, net = _load(model)
        self.model = net.to(self.device).eval()
        self.limit = min(cfg.max_input_tokens, getattr(net.config, "max_position_embeddings", None) or 10**9)
        # Which weights score, where and in what precision: said once, when the model is loaded (a
        # rerun whose rewards are all in the ledger loads nothing and says nothing).
        params = sum(p.numel() for p in net.parameters())
        print(f"judge: reward model {model} loaded ({params / 1e6:.1f}M params, {self.device}, "
              f"{str(net.dtype).removeprefix('torch.')})", file=sys.stderr)

    def close(self) -> None:
        """Shut vLLM's pooling engine down (its core is a child process): an engine left to the
        interpreter's exit can abort it ("terminate called without an active exception")."""
        llm, self.llm = self.llm, None
        if llm is not None:
            from rlaif.models import shutdown_engine

            shutdown_engine(llm)

    def _ids(self, chat, response: str) -> list[int]:
        conv = [*map(dict, chat), {"role": "assistant", "content": response}]
        enc = self.tok.apply_chat_template(conv, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def count_tokens(self, chat, response: str) -> int:
        """Tokens the reward model reads for one candidate (the stage's input estimate)."""
        return len(self._ids(chat, response))

    def _free_id(self, seqs: list[list[int]]) -> int:
        """A token id none of `seqs` contains, to pad a batch with when the config names no pad id."""
        used = set().union(*seqs)
        top = self.model.get_input_embeddings().num_embeddings
        return next(i for i in range(top - 1, -1, -1) if i not in used)

    def _pool_end(self, ids: list[int]) -> list[int]:
        """The sequence up to the token transformers pools at, its rightmost token that is not the pad id
        (GenericForSequenceClassification): vLLM pools at the last token, and causal attention makes the
        last token of this prefix the same hidden state. Only a sequence ending in pad ids changes."""
        end = len(ids)
        while self.pad is not None and end > 1 and ids[end - 1] == self.pad:
            end -= 1
        return ids[:end]

    def _score_vllm(self, seqs: list[list[int]]) -> list[float]:
        from vllm import PoolingParams

        outs = self.llm.classify([{"prompt_token_ids": self._pool_end(s)} for s in seqs],
                                 pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outs]  # no activation: the head's raw output

    def score(self, seqs: list[list[int]]) -> list[float]:
        """One batched forward pass (one engine queue with vLLM): the reward of each token sequence."""
        import torch

        if self.llm is not None:
            return self._score_vllm(seqs)
        # transformers' sequence classifiers pool at the rightmost token that is not
        # config.pad_token_id (GenericForSequenceClassification in transformers/modeling_layers.py).
        # With right padding that is where the same sequence alone pools, so a reward does not depend on
        # its batch. A config without a pad id pools at the last token and refuses batches of more than
        # one: such a batch is padded with an id none of its sequences contains, set for this pass only.
        cfg = self.model.config.get_text_config()
        configured = cfg.pad_token_id
        pad = configured if configured is not None else self._free_id(seqs)
        # Right padding keeps every real token at the position it has alone (causal attention never
        # looks right), which also holds for models with absolute position embeddings.
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        try:
            cfg.pad_token_id = pad
            with torch.inference_mode():
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        finally:
            cfg.pad_token_id = configured
        return out.logits[:, 0].float().cpu().tolist()

    def _check(self, call: Call, ids: list[int]) -> None:
        # The stage rejects over-long candidates before any call (rlaif/judge/candidates.py) by a character
        # estimate; this catches what that estimate let through, before a forward pass is spent.
        if len(ids) > self.limit:
            raise UserError(f"judge.model {self.path}: candidate {call.a_id} is {len(ids)} tokens, over the "
                            f"limit of {self.limit} (judge.max_input_tokens or the model's context); "
                            "lower judge.max_response_chars so such inputs are rejected before judging")

    def run(self, calls, on_reply) -> None:
        calls = iter(calls)
        # vLLM: one engine queue per chunk of candidates; transformers: one forward pass per judge.batch_size
        size = CHUNK if self.llm is not None else self.cfg.batch_size
        while batch := list(islice(calls, size)):
            for call in batch:
                if call.kind != "reward" or call.response is None:
                    raise UserError(f"judge.backend=reward_model scores candidates only, got a {call.kind!r} "
                                    "call: use judge.mode=score with it")
            seqs = [self._ids(c.chat, c.response) for c in batch]
            for call, ids in zip(batch, seqs):
                self._check(call, ids)
            t0 = time.monotonic()
            rewards = self.score(seqs)
            dt = (time.monotonic() - t0) / len(batch)
            for call, ids, r in zip(batch, seqs, rewards):
                on_reply(call, Reply(score=r, input_tokens=len(ids), output_tokens=0, latency_s=dt,
                                     finish_reason="stop"))
