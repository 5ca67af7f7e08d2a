"""Training and vLLM memory, estimated from the model folder's config.json; no weights are loaded.

`plan_memory(cfg)` is what `rlaif plan` prints (issue 21, item 2). The training model is the one in
configs/gpu-8b.yaml's `train:` comment, per micro-batch of train.batch_size pairs = 2 x batch_size
sequences of train.max_length tokens (DPO runs chosen and rejected in one forward):
weights + LoRA (fp32 weight, grad, Adam m, v) + activations + log-prob head. The reference is the same
weights with the adapter disabled under no_grad (TRL 1.16 DPOTrainer._compute_loss): one layer's
activations at a time while the policy's saved ones are held, within the one-layer allowance below;
precompute_ref_log_probs moves that pass before training and leaves the peak where it is.

Measured (bench/memory.py: one real step, demo model, fp32 CPU, 2 pairs x 512 tokens, 2026-12-05): RSS growth
1.02x this estimate without gradient checkpointing, 1.44x with it; with MALLOC_MMAP_THRESHOLD_=131072 (freed
buffers go back to the system, so RSS ~ live tensors) 0.73x and 0.98x. The per-layer count 16h + 6i is generous:
it includes LoRA's dropout copies, which TRL's DPOConfig.disable_dropout (default True) turns into no-ops.
So on a GPU, where torch.cuda.max_memory_allocated counts live tensors, the figure is an upper bound.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

GB = 1e9
HEADROOM = 0.85  # of device memory: the CUDA caching allocator fragments (configs/gpu-8b.yaml: 69 of 80 GB "too close")
CUDA_CONTEXT = 0.75 * GB  # CUDA context + cuBLAS workspace, 0.5-1 GB per process
# A CPU process's RSS runs above its live tensors: glibc keeps freed per-layer buffers (measured up to 1.44x
# the estimate with gradient checkpointing, above). RAM is checked against the estimate times this.
CPU_RSS_FACTOR = 1.5
REFERENCE_GPUS = {"80 GB (H100/A100)": 80 * GB, "141 GB (H200)": 141 * GB}
# TRL >= 1.x scores tokens through a fused LM head (trl/kernels/chunked_logprob.py): tiles of
# TOKEN_CHUNK_SIZE tokens x chunk_size vocabulary, never the whole [tokens, vocab] logits.
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768


def read_dims(folder: str | Path) -> dict:
    """Layer shapes from config.json (a multimodal config's text_config when there is one)."""
    raw = json.loads((Path(folder) / "config.json").read_text())
    c = raw.get("text_config") or raw
    h, heads = c["hidden_size"], c["num_attention_heads"]
    d = {"layers": c["num_hidden_layers"], "hidden": h, "inter": c["intermediate_size"], "heads": heads,
         "kv_heads": c.get("num_key_value_heads") or heads, "head_dim": c.get("head_dim") or h // heads,
         "vocab": c["vocab_size"], "tied": bool(raw.get("tie_word_embeddings", c.get("tie_word_embeddings", False))),
         "max_position_embeddings": c.get("max_position_embeddings"),
         "dtype": raw.get("torch_dtype") or raw.get("dtype")}
    q, kv = heads * d["head_dim"], d["kv_heads"] * d["head_dim"]
    # a mixture of experts holds every expert's MLP (Mixtral's num_local_experts, Qwen-MoE's num_experts)
    d["experts"] = c.get("num_local_experts") or c.get("num_experts") or 1
    mlp = 3 * h * (c.get("moe_intermediate_size") or d["inter"]) * d["experts"]
    d["linear_params"] = d["layers"] * (2 * h * q + 2 * h * kv + mlp)  # q,o + k,v + gate,up,down
    d["other_params"] = d["vocab"] * h * (1 if d["tied"] else 2) + (2 * d["layers"] + 1) * h  # embeddings, norms
    d["params"] = d["linear_params"] + d["other_params"]
    return d


def lora_params(d: dict, r: int, targets) -> int:
    """r x (in + out) per adapted matrix; "all-linear" is PEFT's every linear layer but the output head."""
    h, q, kv, i = d["hidden"], d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"], d["inter"]
    shapes = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h,
              "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h, "lm_head": h + d["vocab"]}
    if targets == "all-linear":
        names = [n for n in shapes if n != "lm_head"]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
    per_layer = sum(shapes[n] for n in names if n in shapes and n != "lm_head")
    return r * (d["layers"] * per_layer + (shapes["lm_head"] if "lm_head" in names else 0))


def settings(cfg, cuda: bool) -> dict:
    """The knobs that size a step, as the train stage passes them to TRL and PEFT (rlaif/train/stage.py),
    with train.trainer_args / train.lora_args winning where they set the same thing."""
    t = cfg.train
    ta, la = getattr(t, "trainer_args", None) or {}, getattr(t, "lora_args", None) or {}
    ckpt = ta.get("gradient_checkpointing", cuda if t.gradient_checkpointing is None else t.gradient_checkpointing)
    return {"batch_size": ta.get("per_device_train_batch_size", t.batch_size),
            "grad_accum": ta.get("gradient_accumulation_steps", t.gradient_accumulation_steps),
            "max_length": ta.get("max_length", t.max_length), "gradient_checkpointing": bool(ckpt),
            "lora_r": la.get("r", t.lora_r), "targets": la.get("target_modules", t.lora_target_modules),
            "modules_to_save": la.get("modules_to_save") or [], "load_in_4bit": t.load_in_4bit,
            "optim": str(ta.get("optim", "adamw_torch")), "cuda": cuda,
            "bytes": 2 if cuda else 4}  # rlaif.models.default_dtype: bf16 on CUDA, fp32 on CPU


def trl_fused_head() -> bool:
    """Whether the installed TRL scores tokens through its fused LM head (read from its source, not imported)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = Path(list(spec.submodule_search_locations)[0]) / "trainer" / "utils.py"
    try:
        return "def add_fused_lm_head(" in path.read_text(encoding="utf-8")
    except OSError:
        return False


def train_memory(d: dict, s: dict, logits: str = "fused") -> dict:
    """Bytes per term at the peak of one DPO step. logits: "fused" (TRL's tiled head) or "full"
    (tokens x vocab fp32 logits and their log-softmax: the bound configs/gpu-8b.yaml's comment states)."""
    b, tokens, h, L = s["bytes"], 2 * s["batch_size"] * s["max_length"], d["hidden"], d["layers"]
    if s["load_in_4bit"]:  # NF4: 4 bits + one fp32 absmax per 64 weights, double-quantised to ~0.127 bits
        weights = d["linear_params"] * (0.5 + 0.127 / 8) + d["other_params"] * 2  # embeddings and head stay bf16
    else:
        weights = d["params"] * b
    n_lora = lora_params(d, s["lora_r"], s["targets"])
    state = 4 + 4 + (2 if "8bit" in s["optim"] else 8)  # fp32 weight (PEFT upcasts adapters), grad, Adam m and v
    lora = n_lora * (state + (2 if b == 2 else 0))  # + the bf16 copy autocast makes for the matmul
    saved = [n for n in s["modules_to_save"] if n in ("lm_head", "embed_tokens")]
    lora += len(saved) * d["vocab"] * h * (b + state)  # a trainable full copy of each, with its Adam state
    # Activations per token per layer (the gpu-8b comment's model, SDPA/flash attention, no seq x seq matrix):
    # a layer's input h values; a whole layer ~16h + 6i values (q/k/v/o, norms, residuals, gate/up/act/down).
    full_layer = (16 * h + 6 * d["inter"]) * b
    if s["gradient_checkpointing"]:
        acts = tokens * (L * h * b + full_layer)  # inputs kept, one layer recomputed at a time
    else:
        acts = tokens * L * full_layer
    if logits == "full":
        head = tokens * d["vocab"] * 4 * 2
    else:  # one tile on CUDA (Triton folds it in place); on CPU the torch fallback (_backward_tile) holds
        # ~8 tile-sized fp32 arrays at once: tile, y, z, log_p, p, grad, is_target.float(), their difference
        # (measured: 1.06 GiB per 1,024 tokens on the 2-layer tiny model, where nothing else is big)
        tile = min(tokens, TRL_TOKEN_TILE) * min(d["vocab"], TRL_VOCAB_TILE) * (b if s["cuda"] else 4 * 8)
        head = tile + tokens * h * (b + 4)  # + the scored hidden states and their fp32 gradient
    return {"weights": weights, "lora_and_optimizer": lora, "activations": acts, "logprob_head": head,
            "lora_params": n_lora, "tokens_per_micro_batch": tokens, "logits_model": logits}


def peak(terms: dict) -> float:
    return sum(terms[k] for k in ("weights", "lora_and_optimizer", "activations", "logprob_head"))


def need(terms: dict, s: dict) -> float:
    """What the device must hold: the step's peak plus the CUDA context on a GPU; on CPU, the RSS it may reach."""
    return peak(terms) + CUDA_CONTEXT if s["cuda"] else peak(terms) * CPU_RSS_FACTOR


def suggestions(d: dict, s: dict, room: float, logits: str) -> list[dict]:
    """Settings that bring the need under `room`, each alone (pairs per optimizer step kept), then together."""
    pairs = s["batch_size"] * s["grad_accum"]
    tries = []
    if not s["gradient_checkpointing"]:
        tries.append(({"gradient_checkpointing": True}, "train.gradient_checkpointing=true"))
    for bs in sorted({s["batch_size"] // 2, 1}, reverse=True):  # half the micro-batch, then one pair
        if 1 <= bs < s["batch_size"] and pairs % bs == 0:
            tries.append(({"batch_size": bs, "grad_accum": pairs // bs}, f"train.batch_size={bs} "
                          f"train.gradient_accumulation_steps={pairs // bs} (still {pairs} pairs per step)"))
    if s["cuda"] and not s["load_in_4bit"]:
        tries.append(({"load_in_4bit": True}, "train.load_in_4bit=true (QLoRA)"))
    if s["max_length"] >= 512:
        tries.append(({"max_length": s["max_length"] // 2},
                      f"train.max_length={s['max_length'] // 2} (longer pairs are dropped or truncated)"))
    out = [{"set": text, "need_bytes": need(train_memory(d, {**s, **ch}, logits), s)} for ch, text in tries]
    together = [(ch, text) for ch, text in tries if "max_length" not in ch and ch.get("batch_size", 1) == 1]
    if len(together) > 1 and not any(o["need_bytes"] <= room for o in out):
        combo = {k: v for ch, _ in together for k, v in ch.items()}
        out.append({"set": " + ".join(text for _, text in together),
                    "need_bytes": need(train_memory(d, {**s, **combo}, logits), s)})
    return [{**o, "fits": o["need_bytes"] <= room} for o in out]


def vllm_defaults(total: float) -> tuple[int, int]:
    """vLLM's LLM-class max_num_seqs and max_num_batched_tokens for a GPU of this size
    (vllm/engine/arg_utils.py, get_batch_defaults, vLLM 0.32): >= 70 GiB (H100, H200): 1024, 16384; else 256, 8192."""
    return (1024, 16384) if total >= 70 * 2**30 else (256, 8192)


def vllm_kv(d: dict, gen, total: float) -> dict:
    """KV-cache room by vLLM's rule: gpu_memory_utilization is "the fraction of GPU memory to be used for the
    model executor" (vLLM 0.32 CacheConfig, vllm/config/cache.py); of total x that, weights, the profiled
    activation peak and non-torch memory are taken first and the rest is KV cache (vllm/v1/worker/gpu_worker.py,
    determine_available_memory), at 2 (K and V) x layers x kv_heads x head_dim x 2 B (bf16) per token."""
    ea = getattr(gen, "engine_args", None) or {}
    tp = gen.tensor_parallel_size
    seqs, batched = vllm_defaults(total)
    seqs, batched = ea.get("max_num_seqs", seqs), ea.get("max_num_batched_tokens", batched)
    weights = d["params"] * 2 / tp
    # Allowance (stated, not profiled): one forward of max_num_batched_tokens (~(6h + 2i) bf16 values a token
    # at the widest point, plus fp32 logits of max_num_seqs rows) and 1.5 GB of CUDA graphs and non-torch memory.
    acts = batched * (6 * d["hidden"] + 2 * d["inter"]) * 2 / tp + seqs * d["vocab"] * 4 + 1.5 * GB
    per_token = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * 2 / tp
    kv = total * gen.gpu_memory_utilization - weights - acts
    max_len = gen.max_model_len or d["max_position_embeddings"] or 4096
    tokens = max(0, int(kv // per_token))
    return {"gpu_bytes": total, "utilization": gen.gpu_memory_utilization, "weights_bytes": weights,
            "allowance_bytes": acts, "kv_bytes": max(0.0, kv), "kv_bytes_per_token": per_token, "kv_tokens": tokens,
            "max_model_len": max_len, "max_num_seqs": seqs, "full_length_seqs": tokens // max_len,
            "fits_one_sequence": tokens >= max_len}


def devices() -> dict:
    """The visible CUDA devices (free and total bytes), else this machine's RAM. torch is imported only
    here, only when installed and a GPU driver's device node exists (NVIDIA, ROCm, WSL): `rlaif plan` on a
    judge-only or CPU machine answers without it."""
    gpus = []
    driver = any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg"))
    if driver and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                gpus.append({"name": torch.cuda.get_device_name(i), "free": free, "total": total})
    if gpus:
        return {"gpus": gpus}
    try:
        import psutil

        vm = psutil.virtual_memory()
        return {"gpus": [], "ram_free": vm.available, "ram_total": vm.total}
    except ImportError:
        info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines() if ":" in ln)
        kb = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
        return {"gpus": [], "ram_free": kb("MemAvailable"), "ram_total": kb("MemTotal")}


def model_folder(cfg) -> Path | str:
    """The model's folder, or the reason it cannot be read (the demo model only once fetched: a plan spends nothing)."""
    from rlaif.models import demo_dir

    folder = demo_dir() if cfg.model == "demo" else Path(cfg.model).expanduser()
    if not (folder / "config.json").is_file():
        return (f"memory: not estimated: {folder}/config.json not found" +
                (" (the demo model is fetched on first use: rlaif demo-model)" if cfg.model == "demo" else ""))
    return folder


def _gb(x: float) -> str:
    return f"{x / GB:.{1 if x >= GB else 2}f} GB"


def _rooms(dev: dict, cuda: bool) -> dict:
    """Where the step must fit -> usable bytes: each visible GPU (HEADROOM of what is free now, another
    process may hold some), reference GPUs for a GPU config planned on a machine without one, or RAM."""
    if dev["gpus"]:
        return {f"GPU {i} {g['name']} ({_gb(g['free'])} free of {_gb(g['total'])})": g["free"] * HEADROOM
                for i, g in enumerate(dev["gpus"])}
    if cuda:
        return {name: total * HEADROOM for name, total in REFERENCE_GPUS.items()}
    return {f"no GPU: CPU RAM ({_gb(dev['ram_total'])})": dev["ram_free"]}  # CPU_RSS_FACTOR is in `need`


def _train_lines(folder, d: dict, s: dict, terms: dict, off: dict, seen_gpu: bool) -> list[str]:
    cuda, experts = s["cuda"], (f" x {d['experts']} experts" if d["experts"] > 1 else "")
    return [f"memory: {folder}: {d['params'] / 1e9:.2f}B params ({d['layers']} layers, hidden {d['hidden']}, MLP "
            f"{d['inter']}{experts}, {d['kv_heads']}/"
            f"{d['heads']} k/v heads, vocab {d['vocab']:,}); weights not loaded",
            f"train, one micro-batch of {s['batch_size']} pairs = {terms['tokens_per_micro_batch']:,} tokens (every "
            f"sequence at train.max_length {s['max_length']}: the worst case, TRL pads to the longest in a batch), "
            f"{'bf16 on CUDA' if cuda else 'fp32 on CPU'}{', 4-bit base' if s['load_in_4bit'] else ''}"
            + ("" if seen_gpu or not cuda else " (no GPU visible here: figures for a CUDA GPU)") + ":",
            f"  weights {_gb(terms['weights'])} + LoRA r{s['lora_r']} ({terms['lora_params'] / 1e6:.1f}M params, "
            f"fp32 + Adam) {_gb(terms['lora_and_optimizer'])} + activations {_gb(terms['activations'])} (gradient "
            f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}) + log-prob head "
            f"{_gb(terms['logprob_head'])} ("
            + ("TRL fused head, tiled" if terms["logits_model"] == "fused" else "full fp32 logits")
            + f") = {_gb(peak(terms))} peak"
            + (f" + CUDA context {_gb(CUDA_CONTEXT)}" if cuda
               else f"; RSS up to x{CPU_RSS_FACTOR} (glibc keeps freed buffers)"),
            f"  gradient checkpointing {'off' if s['gradient_checkpointing'] else 'on'} instead: activations "
            f"{_gb(off['activations'])}, peak {_gb(peak(off))}",
            "  reference log-probs: the same weights with the adapter off, under no_grad (no second copy)"]


def _vllm_lines(runs: dict) -> list[str]:
    return [f"vllm on {w} at gpu_memory_utilization {v['utilization']}: weights {_gb(v['weights_bytes'])} + allowance "
            f"{_gb(v['allowance_bytes'])} -> KV cache {_gb(v['kv_bytes'])} = {v['kv_tokens']:,} tokens = "
            f"{v['full_length_seqs']} sequences of max_model_len {v['max_model_len']} "
            f"(max_num_seqs {v['max_num_seqs']})"
            + ("" if v["fits_one_sequence"] else ": NOT ONE full-length sequence fits") for w, v in runs.items()]


def plan_memory(cfg) -> dict:
    """{"lines": what `rlaif plan` prints, "data": the same figures in bytes}."""
    folder = model_folder(cfg)
    if isinstance(folder, Path):
        try:
            d = read_dims(folder)
        except (KeyError, TypeError, ValueError) as e:  # not JSON, or not a decoder config this model knows
            folder = f"memory: not estimated: {folder}/config.json: no {e} (a decoder-only LM's config.json is read)"
    if isinstance(folder, str):
        return {"lines": [folder], "data": {"estimated": False, "why": folder}}
    dev = devices()
    cuda = bool(dev["gpus"]) or cfg.generate.backend == "vllm" or cfg.train.load_in_4bit  # a GPU config
    s, logits = settings(cfg, cuda), ("fused" if trl_fused_head() else "full")
    terms = train_memory(d, s, logits)
    off = train_memory(d, {**s, "gradient_checkpointing": not s["gradient_checkpointing"]}, logits)
    total, rooms = need(terms, s), _rooms(dev, cuda)
    lines, fits, fixes = _train_lines(folder, d, s, terms, off, bool(dev["gpus"])), {}, {}
    for where, room in rooms.items():
        fits[where] = total <= room
        lines.append(f"  {where}: {'fits' if fits[where] else 'does NOT fit'}: needs {_gb(total)} of {_gb(room)} "
                     + (f"usable ({HEADROOM:.0%}: allocator headroom)" if cuda else "available"))
        if not fits[where]:
            fixes[where] = suggestions(d, s, room, logits)
            lines += [f"    {o['set']}: {_gb(o['need_bytes'])} ({'fits' if o['fits'] else 'still too much'})"
                      for o in fixes[where]]
    data = {"estimated": True, "model": str(folder), "dims": d, "settings": s, "train": terms,
            "peak_bytes": peak(terms), "need_bytes": total, "other_checkpointing": off, "fits": fits,
            "suggestions": fixes}
    if cfg.generate.backend == "vllm":
        gpus = {f"GPU {i} {g['name']}": g["total"] for i, g in enumerate(dev["gpus"])} or REFERENCE_GPUS
        data["vllm"] = {w: vllm_kv(d, cfg.generate, t) for w, t in gpus.items()}
        lines += _vllm_lines(data["vllm"])
    return {"lines": lines, "data": data}
