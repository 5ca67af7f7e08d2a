"""CLI surface: help that teaches, lazy imports, clear errors before any heavy work."""
import subprocess
import sys

import pytest

from conftest import ROOT, rlaif_cli

HEAVY = ["torch", "vllm", "transformers", "trl", "peft", "datasets"]


def test_help_imports_no_heavy_library():
    code = ("import sys; from rlaif.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "generate" in out.stdout and "examples:" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("cmd", ["generate", "judge", "filter", "train", "evaluate", "run", "status", "report", "demo-model"])
def test_every_subcommand_help_ends_with_examples(cmd):
    res = rlaif_cli(cmd, "--help")
    assert res.returncode == 0, res.stderr
    tail = res.stdout[res.stdout.rindex("examples:"):]
    assert f"rlaif {cmd}" in tail


def test_evaluate_without_heldout_prompts_says_which_key(tmp_path):
    res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", "evaluate.prompts=null")
    assert res.returncode == 2
    assert "evaluate.prompts: not set" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_refuses_trained_prompts_as_heldout(tmp_path):
    res = rlaif_cli("evaluate", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}",
                    "evaluate.prompts=configs/prompts/quickstart.jsonl")
    assert res.returncode == 2
    assert "also appear in the training prompts" in res.stderr and "prompt_id" in res.stderr


def test_report_on_a_missing_folder(tmp_path):
    res = rlaif_cli("report", str(tmp_path / "nope"))
    assert res.returncode == 2 and "no such run folder" in res.stderr


def test_generate_without_config_is_a_clear_error():
    res = rlaif_cli("generate")
    assert res.returncode == 2
    assert "--config" in res.stderr and "Traceback" not in res.stderr
