"""TRL, PEFT and vLLM settings under their own names (issue 21 item 4): checked when the config loads
against the installed library's dataclass, refused with "did you mean" or the rlaif key, and passed
through to the library. The vLLM half runs in tests/test_generate_vllm.py (the CPU build)."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, rlaif_cli
from rlaif import fingerprint as FP
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.generate import run as generate
from rlaif.train.stage import dpo_args, lora_config


def _cfg(tmp_path, model, *extra):
    return load_config(ROOT / "configs/quickstart.yaml",
                       [f"run_dir={tmp_path}", f"model={model}", "prompts=tests/assets/prompts.jsonl",
                        "generate.max_tokens=24", "generate.shard_size=8", "generate.batch_size=4",
                        "generate.max_prompts=4", *extra])


@pytest.mark.parametrize("override, words", [
    ("train.trainer_args={warmup_step: 10}", ["trainer_args", "warmup_step", "did you mean 'warmup_steps'"]),
    ("train.trainer_args={beta: 0.3}", ["rlaif sets beta itself", "use train.beta"]),
    ("train.trainer_args={bf16: true}", ["rlaif sets bf16 itself"]),
    ("train.trainer_args={lr_scheduler_type: cosin}", ["trainer_args", "cosin is not a valid SchedulerType"]),
    ("train.lora_args={use_dorra: true}", ["use_dorra", "did you mean 'use_dora'"]),
    ("train.lora_args={r: 4}", ["use train.lora_r"]),
    ("generate.sampling_args={min_pp: 0.1}", ["min_pp", "did you mean 'min_p'"]),
    ("generate.sampling_args={temperature: 0.1}", ["use generate.temperature"]),
    ("generate.sampling_args={presence_penalty: 0.5}", ["transformers backend cannot apply it", "backend=vllm"]),
    ("generate.engine_args={max_num_seqs: 8}", ["engine_args.max_num_seqs", "engine arguments are vLLM's"]),
])
def test_bad_names_are_refused_when_the_config_loads(override, words):
    with pytest.raises(UserError) as e:
        load_config("configs/quickstart.yaml", [override])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_vllm_names_are_checked_without_vllm_installed():
    cfg = load_config("configs/quickstart.yaml", ["generate.backend=vllm",
                                                  "generate.sampling_args={presence_penalty: 0.5, stop: [END]}",
                                                  "generate.engine_args={max_num_seqs: 8, quantization: fp8}"])
    assert cfg.generate.engine_args == {"max_num_seqs": 8, "quantization": "fp8"}
    with pytest.raises(UserError, match="did you mean 'max_num_seqs'"):
        load_config("configs/quickstart.yaml", ["generate.backend=vllm", "generate.engine_args={max_num_seq: 8}"])


def test_an_unknown_name_stops_a_stage_before_any_model_loads(tmp_path):
    res = rlaif_cli("train", "configs/quickstart.yaml", f"run_dir={tmp_path}", "train.lora_args={use_rs_lora: true}")
    assert res.returncode == 2 and "did you mean 'use_rslora'" in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())


def test_trainer_and_lora_args_reach_trl_and_peft(tmp_path):
    cfg = load_config("configs/quickstart.yaml", [
        "train.trainer_args={lr_scheduler_type: cosine, weight_decay: 0.01, max_grad_norm: 0.5, optim: adafactor, "
        "warmup_steps: 3}", "train.lora_args={use_rslora: true, use_dora: true, modules_to_save: [lm_head]}"])
    args = dpo_args(cfg, tmp_path, cuda=False)
    assert (str(args.lr_scheduler_type), args.weight_decay, args.max_grad_norm, str(args.optim), args.warmup_steps) == \
        ("SchedulerType.COSINE", 0.01, 0.5, "OptimizerNames.ADAFACTOR", 3)
    assert args.beta == cfg.train.beta  # rlaif's own keys still set
    lora = lora_config(cfg.train)
    assert (lora.use_rslora, lora.use_dora, list(lora.modules_to_save), lora.r) == (True, True, ["lm_head"], 8)


def test_sampling_args_system_prompt_and_template_reach_generation(tmp_path, tiny_model):
    plain = tmp_path / "plain"
    generate(_cfg(plain, tiny_model))
    base = pl.read_parquet(sorted((plain / "round-0" / "candidates").glob("part-*.parquet")))
    assert base["response"].str.contains(" ", literal=True).any()  # so the stop string below has work to do
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    run = tmp_path / "passed"
    cfg = _cfg(run, tiny_model, 'generate.sampling_args={stop: [" "], repetition_penalty: 1.3}',
               "generate.system_prompt=Answer in one word.", f"generate.chat_template={template}")
    generate(cfg)
    rows = pl.read_parquet(sorted((run / "round-0" / "candidates").glob("part-*.parquet")))
    assert rows.height == base.height and not rows["response"].str.contains(" ", literal=True).any()
    firsts = [m[0] for m in rows["messages"].to_list()]  # a prompt's own system message is kept
    assert all(f["role"] == "system" for f in firsts) and {"role": "system", "content": "Answer in one word."} in firsts
    assert {"role": "system", "content": "Answer in one word."} not in [m[0] for m in base["messages"].to_list()]
    plan = json.loads((run / "round-0" / "candidates" / "plan.json").read_text())
    assert plan["prompt_limit_tokens"] > 0
    from rlaif.generate.plan import render, tokenizer
    from rlaif.models import use_chat_template

    tok = use_chat_template(tokenizer(str(tiny_model))[0], cfg)
    ours = next(m for m in rows["messages"].to_list() if m[0]["content"] == "Answer in one word.")
    assert tok.decode(render(tok, ours)).startswith("<<system>> Answer in one word.\n<<user>> ")
    manifest = json.loads((run / "round-0" / "candidates.manifest.json").read_text())
    assert manifest["sampling"]["sampling_args"] == {"stop": [" "], "repetition_penalty": 1.3}


def test_passthrough_keys_and_the_template_file_are_in_the_fingerprint(tmp_path, tiny_model):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    cfg = _cfg(tmp_path, tiny_model, f"generate.chat_template={template}")
    gen = FP.made_from(cfg, 0, "generate")
    template.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert FP.made_from(cfg, 0, "generate") != gen  # the file by content, not by its path
    tr = FP.made_from(cfg, 0, "train")
    cfg2 = _cfg(tmp_path, tiny_model, f"generate.chat_template={template}", "train.trainer_args={weight_decay: 0.1}")
    assert FP.made_from(cfg2, 0, "train") != tr and FP.made_from(cfg2, 0, "generate") == FP.made_from(cfg, 0, "generate")
    assert Path(template).exists()
