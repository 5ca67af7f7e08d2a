"""GPU smoke test: a tiny random Llama on CUDA through rlaif's transformers backend (bf16) and one DPO
step (bf16, LoRA, reference = the adapter disabled), printing what ran and how long. ~1 min.

    python bench/gpu_smoke.py                 # CUDA; fails if there is none
    python bench/gpu_smoke.py --device cpu    # the same steps on CPU in fp32: a check of the script itself

Needs torch, transformers and peft only: the lent GPU machines have those but not vllm, trl, polars or
openai, and fetch nothing (FIELD-NOTES). The model and its tokenizer are built here, from nothing on
disk. What needs more is import-guarded and said: with trl, polars, pydantic and datasets present the
DPO step is the real `rlaif train` stage (1 step); without them it is the same loss written out
(Rafailov et al. 2023, eq. 7) on the same kind of model. Exit 0 only if every part that ran passed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
WORDS = ("the a of to and in is it you that he was for on are with as I his they be at one have this from "
         "or had by word but what some we can out other were all there when up use your how said an each she "
         "which do their time if will way about many then them write would like so these her long make thing "
         "see him two has look more day could go come did number sound no most people my over know water than "
         "call first who may down side been now find yes paris france capital city answer question").split()
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(folder: Path, dtype):
    """A word-level tokenizer with a ChatML template and a 2-layer random Llama (head size 32), saved."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "\n"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + sorted(set(WORDS)) + list("?.,!:'"))},
                                    unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", bos_token="<|im_start|>", additional_special_tokens=specials[1:3])
    tok.chat_template = CHATML
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def generate(model: str, tok) -> str:
    """rlaif's TransformersBackend: left padding, batches, n samples, the dtype rlaif picks (bf16 on CUDA)."""
    from rlaif.generate.backends import Request
    from rlaif.generate.hf import TransformersBackend

    fields = dict(n=2, max_tokens=16, temperature=0.8, top_p=0.95, top_k=0, batch_size=4, dtype="auto", adapter=None)
    try:
        from rlaif.config import GenerateConfig

        cfg = GenerateConfig(**fields)
    except ImportError as e:  # pydantic absent: the backend reads these attributes only
        print(f"  (rlaif.config not importable: {e}; the backend gets a plain namespace)")
        cfg = SimpleNamespace(**fields)
    b = TransformersBackend(model, cfg, seed=0)
    chats = [[{"role": "user", "content": q}] for q in ("what is the capital of france ?", "say a word", "one two")]
    reqs = [Request(f"p{i}", tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"], 1000 + i) for i, c in enumerate(chats)]
    t0 = time.perf_counter()
    done = list(b.generate([reqs[:2], reqs[2:]]))
    s = time.perf_counter() - t0
    tokens = sum(x.num_tokens for d in done for x in d.samples)
    assert len(done) == 3 and all(len(d.samples) == 2 for d in done), done
    return (f"{len(done)} prompts x 2 samples, {tokens} tokens in {s:.2f} s on {b.device}, "
            f"{next(b.model.parameters()).dtype}; e.g. {done[0].samples[0].text[:60]!r}")


PAIRS = [("what is the capital of france ?", "paris is the capital .", "i do not know ."),
         ("say a word", "water", "no")]


def dpo_rlaif(model: str, root: Path) -> str:
    """The real `rlaif train` stage, one step (needs trl, polars, pydantic, datasets, accelerate)."""
    import json

    import polars as pl

    from rlaif.config import load_config
    from rlaif.io import PAIRS_SCHEMA, write_parquet
    from rlaif.train.stage import run

    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": q}], "chosen": c, "rejected": r,
             "chosen_id": f"c{i}", "rejected_id": f"r{i}", "margin": 1.0, "consistent": True, "chosen_tokens": 3,
             "rejected_tokens": 3, "round": 0} for i, (q, c, r) in enumerate(PAIRS)]
    write_parquet(root / "round-0" / "pairs.parquet", pl.DataFrame(rows), PAIRS_SCHEMA)
    prompts = root / "prompts.jsonl"  # a required key; the train stage reads the pairs only
    prompts.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": q}) + "\n" for i, (q, _, _) in enumerate(PAIRS)))
    cfg = load_config(None, [f"run_dir={root}", f"model={model}", f"prompts={prompts}", "train.max_steps=1", "train.batch_size=2",
                             "train.max_length=64", "train.lora_r=4"])
    t0 = time.perf_counter()
    run(cfg, resume=False)
    m = json.loads((root / "round-0" / "train" / "train.manifest.json").read_text())
    return f"rlaif train: 1 step in {time.perf_counter() - t0:.2f} s (with trainer setup); final {m.get('final')}"


def dpo_by_hand(model: str, tok, device: str) -> str:
    """One DPO step without TRL: LoRA on the model in rlaif's dtype, reference = the adapter disabled."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlaif.models import default_dtype

    net = AutoModelForCausalLM.from_pretrained(model, dtype=default_dtype()).to(device)
    net = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)

    def logp(q: str, a: str) -> torch.Tensor:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                       tokenize=True, return_dict=True)["input_ids"]
        ids = torch.tensor([full], device=device)
        lp = net(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        return lp[len(prompt) - 1:].sum()

    t0 = time.perf_counter()
    with torch.no_grad(), net.disable_adapter():
        ref = [(logp(q, c), logp(q, r)) for q, c, r in PAIRS]
    pol = [(logp(q, c), logp(q, r)) for q, c, r in PAIRS]
    beta = 0.1
    loss = torch.stack([-F.logsigmoid(beta * ((pc - rc) - (pr - rr))) for (pc, pr), (rc, rr) in zip(pol, ref)]).mean()
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (f"hand-written DPO (sigmoid, beta {beta}): 1 step in {time.perf_counter() - t0:.2f} s on {device}, "
            f"{next(net.parameters()).dtype}, loss {loss.item():.4f} (log 2 = 0.6931 at the start)")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False


def part(name: str, fn, *args) -> bool:
    t0 = time.perf_counter()
    try:
        print(f"[ok] {name}: {fn(*args)} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return True
    except ImportError as e:
        print(f"[skipped] {name}: needs {e.name or e} (not installed here)", flush=True)
        return True
    except Exception as e:  # a smoke test reports every failure and goes on
        print(f"[FAILED] {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dpo", choices=["auto", "hand"], default="auto",
                    help="hand: the written-out DPO step even where the rlaif train stage could run")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: rlaif's own device and dtype choice sees no GPU
    t0 = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (torch.cuda.is_available() is False); --device cpu checks the script")
        return 1
    print(f"gpu_smoke: torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""), flush=True)
    from rlaif.models import default_dtype

    ok = True
    with tempfile.TemporaryDirectory(prefix="rlaif-gpu-smoke-") as d:
        model = Path(d) / "tiny-llama"
        tok = tiny_model(model, default_dtype())
        print(f"[ok] tiny random Llama ({len(tok)} words, {default_dtype()}) built in {time.perf_counter() - t0:.1f} s")
        ok &= part("generate: rlaif transformers backend", generate, str(model), tok)
        lacking = [m for m in ("trl", "polars", "pydantic", "datasets", "accelerate") if not _importable(m)]
        if args.dpo == "auto" and not lacking:
            ok &= part("train: rlaif DPO stage, 1 step", dpo_rlaif, str(model), Path(d) / "run")
        else:
            why = f"needs {', '.join(lacking)}" if lacking and args.dpo == "auto" else "--dpo hand"
            print(f"[skipped] train: the rlaif DPO stage ({why}); the same step written out instead")
            ok &= part("train: DPO step by hand", dpo_by_hand, str(model), tok, args.device)
    print(f"gpu_smoke: {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
