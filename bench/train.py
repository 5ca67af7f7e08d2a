"""rlaif train vs a bare TRL DPOTrainer script: seconds/step and peak memory, in one run.

    .venv/bin/python bench/train.py [--model PATH] [--steps 4] [--batch-size 2] [--max-length 256] [--out r.json]

Both sides get the same model, pairs, LoRA and DPO settings, each in a fresh process (imports and
model load are outside the timed region: seconds/step comes from the trainer's own train_runtime).
Run with and without precompute_ref_log_probs. Target: rlaif / bare <= 1.05.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The bare side: what a user would write with TRL alone (same settings as rlaif's train stage).
BARE = r'''
import json, resource, sys
import polars as pl, torch, datasets
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
a = json.loads(sys.argv[1])
pairs = pl.read_parquet(a["pairs"])
rows = [{"prompt": [dict(m) for m in r["messages"]], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.iter_rows(named=True)]
tok = AutoTokenizer.from_pretrained(a["model"])
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
args = DPOConfig(output_dir=a["out"], per_device_train_batch_size=a["bs"], max_steps=a["steps"], learning_rate=2e-5,
                 beta=0.1, max_length=a["max_length"], bf16=False, gradient_checkpointing=False, logging_steps=1,
                 save_strategy="no", report_to=[], seed=0, data_seed=0, precompute_ref_log_probs=a["precompute"])
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                     peft_config=lora)
res = trainer.train()
print("RESULT", json.dumps({"train_runtime": res.metrics["train_runtime"],
                            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


def make_pairs(path: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from rlaif.io import PAIRS_SCHEMA, write_parquet
    from rlaif.prompts import read_prompts

    prompts = read_prompts(ROOT / "configs/prompts/quickstart.jsonl").head(n)
    rows = [{"prompt_id": r["prompt_id"], "messages": r["messages"], "round": 0, "margin": 1.0, "consistent": True,
             "chosen": "Here is a clear, correct and helpful answer to your question. " * 3,
             "rejected": "I am not sure. Maybe ask someone else? " * 2, "chosen_id": f"{r['prompt_id']}/c",
             "rejected_id": f"{r['prompt_id']}/r", "chosen_tokens": 40, "rejected_tokens": 20}
            for r in prompts.iter_rows(named=True)]
    write_parquet(path, pl.DataFrame(rows, schema=PAIRS_SCHEMA), PAIRS_SCHEMA)


def rlaif_side(a: dict, tmp: Path) -> dict:
    run_dir = tmp / f"rlaif-{a['precompute']}"
    (run_dir / "round-0").mkdir(parents=True)
    (run_dir / "round-0" / "pairs.parquet").write_bytes(Path(a["pairs"]).read_bytes())
    cmd = [sys.executable, "-m", "rlaif", "train", "--config", "configs/quickstart.yaml", f"run_dir={run_dir}",
           f"model={a['model']}", f"train.max_steps={a['steps']}", f"train.batch_size={a['bs']}",
           f"train.max_length={a['max_length']}", f"train.precompute_ref_log_probs={str(a['precompute']).lower()}",
           "train.save_steps=100000"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    lines = [json.loads(x) for x in (run_dir / "round-0/train/train-metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((run_dir / "round-0/train/train.manifest.json").read_text())
    runtime = next(x["train_runtime"] for x in lines if "train_runtime" in x)
    return {"train_runtime": runtime, "peak_bytes": manifest["timing"]["peak_memory_bytes"]}


def bare_side(a: dict, tmp: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", BARE, json.dumps({**a, "out": str(tmp / "bare")})], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.split("RESULT", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the demo model")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from rlaif.models import demo_model_path

        args.model = str(demo_model_path())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_pairs(tmp / "pairs.parquet", args.steps * args.batch_size)
        for precompute in (False, True):
            a = {"model": args.model, "pairs": str(tmp / "pairs.parquet"), "bs": args.batch_size,
                 "steps": args.steps, "max_length": args.max_length, "precompute": precompute}
            bare, ours = bare_side(a, tmp), rlaif_side(a, tmp)  # back to back: same machine state
            rows.append({"precompute_ref_log_probs": precompute, "bare_s_per_step": bare["train_runtime"] / args.steps,
                         "rlaif_s_per_step": ours["train_runtime"] / args.steps,
                         "bare_peak_gib": bare["peak_bytes"] / 2**30, "rlaif_peak_gib": ours["peak_bytes"] / 2**30})
    print("| precompute ref | bare s/step | rlaif s/step | ratio | bare peak GiB | rlaif peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precompute_ref_log_probs']} | {r['bare_s_per_step']:.2f} | {r['rlaif_s_per_step']:.2f} | "
              f"{r['rlaif_s_per_step'] / r['bare_s_per_step']:.3f} | {r['bare_peak_gib']:.2f} | {r['rlaif_peak_gib']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
