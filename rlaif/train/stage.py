"""The train stage: DPO + LoRA on the round's pairs -> RUN_DIR/round-K/train/{adapter, train-metrics.jsonl}.

Resumable: checkpoints every `train.save_steps`; a rerun after a kill continues from the last one.
train.manifest.json is written last: its existence means the adapter is complete.

Multi-GPU: `accelerate launch --config_file configs/accelerate/fsdp.yaml -m rlaif train --config ...`
(or deepspeed-zero3.yaml). Every rank runs this code; the Trainer syncs gradients and gathers the
adapter for saving, and only rank 0 writes metrics lines, removes half-written checkpoints, merges,
and writes the manifest.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

from rlaif.config import RunConfig
from rlaif.errors import UserError
from rlaif.io import write_json, write_text
from rlaif.models import use_chat_template
from rlaif.train.data import check_tokenizer, load_pairs, to_dataset
from rlaif.train.policy import adapter_dir, policy_base

MANIFEST = "train.manifest.json"


class TrainingDiverged(UserError):
    exit_code = 8


def is_main_process() -> bool:
    """Rank 0 of `accelerate launch` / torchrun (RANK is set by both), or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def distributed_info(trainer) -> dict:
    """How many processes trained, and under which launcher (both set their own environment)."""
    acc, env = trainer.accelerator, os.environ
    launcher = ("accelerate" if "ACCELERATE_MIXED_PRECISION" in env
                else "torchrun" if "TORCHELASTIC_RUN_ID" in env else None)
    kind = getattr(acc.distributed_type, "value", acc.distributed_type)
    return {"num_processes": acc.num_processes, "distributed_type": str(kind), "mixed_precision": acc.mixed_precision,
            "launcher": launcher}


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The metrics lines, and how many torn ones were dropped. Lines are appended as training logs,
    so a kill -9 mid-write leaves at most the last line torn (no newline, or not JSON): it is dropped
    and counted. A bad line before the last is damage from outside: one error naming it (issue 11, item 4)."""
    if not path.exists():
        return [], 0
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows, torn = [], 0
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no integer step")
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if i < len(lines) - 1:  # a whole line (newline-terminated) that does not parse
                raise UserError(f"{path}: line {i}: not a metrics line ({str(e)[:80]}); delete the file to "
                                "start its log afresh") from None
            torn += 1
            continue
        rows.append(row)
    return rows, torn


def metrics_callback(path: Path, resume_step: int):
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        """One JSON line per logged step; a non-finite loss stops training before any checkpoint of it."""

        torn_lines_dropped = 0

        def on_train_begin(self, args, state, control, **kw):
            if not getattr(state, "is_world_process_zero", True):  # every rank calls back; rank 0 writes
                return
            rows, self.torn_lines_dropped = read_metrics(path)
            if self.torn_lines_dropped:
                print(f"train: {path.name}: dropped a torn last line (the run was killed mid-write)")
            keep = [r for r in rows if r["step"] <= resume_step]  # lines past the checkpoint would be logged twice
            write_text(path, "".join(json.dumps(r) + "\n" for r in keep))  # atomic: a kill here loses nothing

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            bad = [k for k in ("loss", "grad_norm") if isinstance(logs.get(k), float) and not math.isfinite(logs[k])]
            if bad:
                raise TrainingDiverged(f"train: {bad[0]} is {logs[bad[0]]} at step {state.global_step}; stopped "
                                       "before checkpointing it (lower train.learning_rate or check the pairs)")
            if not getattr(state, "is_world_process_zero", True):  # the logged loss is already the all-rank mean
                return
            with open(path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return Metrics()


def _model(base: str, cfg: RunConfig, cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.models import default_dtype

    kwargs = {"dtype": default_dtype()}
    if cfg.train.load_in_4bit:
        if not cuda:
            raise UserError("train.load_in_4bit: 4-bit (bitsandbytes) needs a CUDA GPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)  # never trust_remote_code


def gradient_checkpointing(t, cuda: bool) -> bool:
    """train.gradient_checkpointing, or by default on with CUDA: an 8B model's activations at 2k tokens
    do not fit one 80 GB GPU without it (configs/gpu-8b.yaml has the estimate); on CPU the small models
    fit and it costs ~10% per step."""
    return cuda if t.gradient_checkpointing is None else t.gradient_checkpointing


def check_loss_names(t) -> None:
    """Config load read TRL's loss list from its source; here, with TRL imported, from TRL itself, so a
    name reaches the first step only if this TRL knows it (config load skips the check without TRL)."""
    from trl import DPOConfig

    from rlaif.train.losses import loss_problem, losses_in_help

    known = losses_in_help(DPOConfig.__dataclass_fields__["loss_type"].metadata["help"])
    if (problem := loss_problem(t.loss_type.split(","), known)):
        raise UserError(f"train.loss_type: {problem}")


def dpo_args(cfg: RunConfig, out: Path, cuda: bool):
    from trl import DPOConfig

    t = cfg.train
    check_loss_names(t)
    return DPOConfig(
        output_dir=str(out), per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        max_steps=t.max_steps, num_train_epochs=t.num_epochs, beta=t.beta, loss_type=t.loss_type.split(","),
        loss_weights=t.loss_weights, label_smoothing=t.label_smoothing,
        ld_alpha=t.ld_alpha, max_length=t.max_length, precompute_ref_log_probs=t.precompute_ref_log_probs,
        gradient_checkpointing=gradient_checkpointing(t, cuda), bf16=cuda, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, save_strategy="steps", save_steps=t.save_steps, save_total_limit=2,
        report_to=[] if t.report_to == "none" else [t.report_to], disable_tqdm=False,
        **t.trainer_args,  # train.trainer_args: checked against the installed DPOConfig when the config loaded
    )


def lora_config(t):
    from peft import LoraConfig

    return LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                      target_modules=t.lora_target_modules, task_type="CAUSAL_LM", **t.lora_args)


def build_trainer(cfg: RunConfig, base: str, dataset, tok, callbacks=()):
    """DPOTrainer on a plain base model plus a LoRA config: TRL then uses the base with the adapter
    disabled as the reference (no second model copy)."""
    import torch
    from trl import DPOTrainer

    cuda = torch.cuda.is_available()
    t = cfg.train
    lora = lora_config(t)
    # The arguments before the model: under `accelerate launch` with DeepSpeed ZeRO-3 they register the
    # DeepSpeed config, so from_pretrained loads the weights already partitioned across ranks.
    args = dpo_args(cfg, cfg.round_dir() / "train", cuda)
    trainer = DPOTrainer(model=_model(base, cfg, cuda), args=args,
                         train_dataset=dataset, processing_class=tok, peft_config=lora, callbacks=list(callbacks))
    prev = adapter_dir(cfg, cfg.round - 1)
    if cfg.train.reference == "sft" and cfg.round > 0:
        from peft import load_peft_weights, set_peft_model_state_dict

        # Continue from last round's policy; the reference stays the SFT model (adapter disabled).
        set_peft_model_state_dict(trainer.model, load_peft_weights(str(prev)))
    return trainer


def last_complete_checkpoint(out: Path, remove: bool = True) -> str | None:
    """The newest checkpoint whose trainer_state.json exists: transformers writes it last, so a
    folder without it was cut off by a kill and is removed (by rank 0 only, under a launcher)."""
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for c in ckpts:
        if (c / "trainer_state.json").exists():
            return str(c)
        if remove:
            print(f"train: removing incomplete {c.name} (interrupted while saving)")
            shutil.rmtree(c, ignore_errors=True)
    return None


def require_previous_round(cfg: RunConfig) -> None:
    prev = cfg.round_dir(cfg.round - 1) / "train" / MANIFEST
    if cfg.round > 0 and not prev.exists():
        raise UserError(f"train round {cfg.round}: round {cfg.round - 1}'s policy is not finished ({prev} missing); "
                        f"train round {cfg.round - 1} first (rlaif run does the rounds in order)")


def run(cfg: RunConfig, resume: bool = True) -> Path:
    from transformers import AutoTokenizer

    out = cfg.round_dir() / "train"
    if (out / MANIFEST).exists():
        print(f"train: {out / MANIFEST} exists; stage already done")
        return out / "adapter"
    main = is_main_process()
    pairs, counts = load_pairs(cfg)
    require_previous_round(cfg)
    base = _policy_base(cfg, main)
    tok = use_chat_template(AutoTokenizer.from_pretrained(base), cfg)
    check_tokenizer(cfg, tok, base)
    dataset, over = to_dataset(pairs, tok, cfg)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = last_complete_checkpoint(out, remove=main) if resume else None
    step0 = int(ckpt.rsplit("-", 1)[1]) if ckpt else 0
    if ckpt and main:
        print(f"train: resuming from {ckpt} (step {step0})")
    t0 = time.perf_counter()
    metrics = metrics_callback(out / "train-metrics.jsonl", step0)
    trainer = build_trainer(cfg, base, dataset, tok, [metrics])
    result = trainer.train(resume_from_checkpoint=ckpt)
    trainer.save_model(str(out / "adapter"))  # every rank: FSDP/ZeRO-3 gather the adapter, rank 0 writes it
    if not trainer.is_world_process_zero():
        return out / "adapter"
    (out / "adapter" / "training_args.bin").unlink(missing_ok=True)  # a pickle; the adapter folder gets shared
    if cfg.train.merge:
        from rlaif.train.policy import ensure_merged

        ensure_merged(cfg, cfg.round)
    return _manifest(cfg, out, base, counts, over, len(dataset), result, step0, time.perf_counter() - t0,
                     distributed_info(trainer), metrics.torn_lines_dropped)


def _policy_base(cfg: RunConfig, main: bool) -> str:
    """reference=previous merges last round's policy first: rank 0 does it, the other ranks wait for
    the merged folder (it appears whole: built aside, then renamed). Should rank 0 fail, the launcher
    stops every rank."""
    if not main and cfg.train.reference == "previous" and cfg.round > 0:
        merged = cfg.round_dir(cfg.round - 1) / "train" / "merged" / "config.json"
        while not merged.exists():
            time.sleep(2)
    return policy_base(cfg, cfg.round)


def _manifest(cfg, out, base, counts, over, n_train, result, step0, wall, distributed: dict, torn: int) -> Path:
    import torch

    from rlaif.models import folder_id

    lines, torn_now = read_metrics(out / "train-metrics.jsonl")
    last = next((ln for ln in reversed(lines) if "loss" in ln), {})
    steps = result.global_step - step0
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_json(out / MANIFEST, {
        "stage": "train", "round": cfg.round, "base_model": base, "reference": cfg.train.reference,
        "reference_model": base, "adapter": str(out / "adapter"),
        "adapter_id": folder_id(out / "adapter"),  # its content, as generate's fingerprint counts it
        "pairs": {**counts, "over_max_length_dropped": over, "trained_on": n_train},
        "steps": result.global_step, "resumed_from_step": step0,
        "final": {k: last.get(k) for k in ("loss", "rewards/accuracies", "rewards/margins")},
        "timing": {"wall_s": round(wall, 2), "s_per_step": round(wall / steps, 3) if steps else None,
                   "peak_memory_bytes": int(peak)},
        "distributed": distributed,
        "metrics_torn_lines_dropped": torn + torn_now,
        "train": cfg.train.model_dump(),
    })
    print(f"train: {result.global_step} steps on {n_train} pairs -> {out / 'adapter'} (final loss {last.get('loss')})")
    return out / "adapter"
