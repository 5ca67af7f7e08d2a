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


@pytest.mark.parametrize("cmd", ["generate", "judge", "filter", "train", "evaluate", "run", "status", "report", "compare",
                                 "demo-model", "check", "plan"])
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


# ---------------------------------------------------------------- issue 18, item 11: CLI friction

STAGE_CMDS = ["generate", "judge", "filter", "train", "evaluate", "run", "calibrate", "check", "plan"]


@pytest.mark.parametrize("cmd", STAGE_CMDS)
def test_every_stage_command_takes_the_config_positionally(cmd):
    """`rlaif judge team.yaml` as `rlaif run team.yaml`: the config loads and its override is checked."""
    res = rlaif_cli(cmd, "configs/quickstart.yaml", "generate.n=zero")
    assert res.returncode == 2, res.stderr
    out = res.stderr + res.stdout  # rlaif check prints its report on stdout
    assert "override generate.n=zero (applied to configs/quickstart.yaml): generate.n:" in out, out


def test_an_option_after_overrides_is_an_option(tmp_path):
    res = rlaif_cli("train", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path}", "--no-resume",
                    "train.beta=zero")
    assert "unrecognized arguments" not in res.stderr, res.stderr
    assert res.returncode == 2 and "override train.beta=zero" in res.stderr, res.stderr
    res = rlaif_cli("train", "configs/quickstart.yaml", "--config", "configs/gpu-8b.yaml")
    assert res.returncode == 2 and "two configs" in res.stderr, res.stderr


def _examples(cmd: str) -> list[list[str]]:
    """The `rlaif CMD ...` lines of CMD's --help examples (continuations joined, comments dropped)."""
    import shlex

    from rlaif.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "cmd").choices[cmd]
    text = sub.format_help()
    block = text[text.rindex("examples:"):].replace("\\\n", " ")
    out = []
    for line in block.splitlines()[1:]:
        words = shlex.split(line, comments=True)
        if "rlaif" in words and words[words.index("rlaif") + 1:][:1] == [cmd]:
            out.append(words[words.index("rlaif") + 1:])
    return out


@pytest.mark.parametrize("cmd", STAGE_CMDS)
def test_every_stage_example_is_its_own_and_loads(cmd):
    """Each command's examples are its own (not one template with the name swapped in) and each
    parses and loads its config as written, overrides included."""
    from rlaif.cli import _config_file, _parser
    from rlaif.config import load_config

    mine = _examples(cmd)
    assert len(mine) >= 2, mine
    others = {" ".join(w[1:]) for c in STAGE_CMDS if c != cmd for w in _examples(c)}
    own = {" ".join(w[1:]) for w in mine} - others  # `rlaif X CONFIG` alone may be everyone's first line
    assert len(own) >= len(mine) - 1 and own, f"{cmd}'s examples are another command's: {mine}"
    for words in mine:
        args = _parser().parse_args(words)
        _config_file(args)
        overrides = [f"calibrate.{o}" if o.startswith("gold=") else o for o in args.overrides]
        assert load_config(args.config, overrides), words


def test_main_help_points_at_the_readme():
    res = rlaif_cli("--help")
    assert "README" in res.stdout and "DESIGN.md" not in res.stdout and "FIELD-NOTES" not in res.stdout


def test_report_help_lists_every_plot_the_readme_lists():
    readme = (ROOT / "README.md").read_text()
    plots = ["winrate.png", "length.png", "judge_length.png", "checks.png", "training.png"]
    assert all(p in readme for p in plots)
    res = rlaif_cli("report", "--help")
    assert all(p in res.stdout for p in plots), res.stdout


# ---------------------------------------------------------------- issue 18, item 7: reading a run

def test_status_and_report_never_import_the_users_checks(tmp_path):
    """RUN_DIR/config.yaml names a check function `mychecks:fn`. status and report read the run from
    another folder, where the module cannot be imported, and from its own, where importing it would
    leave a mark: neither needs nor runs it."""
    import os

    import yaml

    from rlaif.config import dump_config, load_config

    run_dir = tmp_path / "run"
    data = yaml.safe_load(dump_config(load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={run_dir}"])))
    data["evaluate"]["checks"]["mine"] = {"function": "mychecks:fn"}
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data))
    home = tmp_path / "home"
    home.mkdir()
    (home / "mychecks.py").write_text("import pathlib\npathlib.Path(__file__).with_name('IMPORTED').touch()\n"
                                      "def fn(prompt, response):\n    return True\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cwd in (elsewhere, home):
        for cmd in ("status", "report"):
            res = subprocess.run([sys.executable, "-m", "rlaif", cmd, str(run_dir)], capture_output=True, text=True,
                                 cwd=cwd, env=env, timeout=300)
            assert res.returncode == 0, (cmd, cwd.name, res.stderr)
    assert not (home / "IMPORTED").exists()
