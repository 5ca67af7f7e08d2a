"""Config: every shipped YAML validates; errors name the key and the file; overrides are typed."""
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, rlaif_cli
from rlaif.config import RunConfig, dump_config, load_config
from rlaif.errors import UserError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert "quickstart.yaml" in names and len(names) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    first = path.read_text().splitlines()[:3]
    assert any("rlaif " in line and path.name in line for line in first), "config must open with the command that runs it"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(ROOT / "configs/quickstart.yaml",
                      ["generate.n=7", "generate.temperature=0.5", "generate.adapter=null", "seed=3", "round=2"])
    assert (cfg.generate.n, cfg.generate.temperature, cfg.generate.adapter, cfg.seed, cfg.round) == (7, 0.5, None, 3, 2)
    assert cfg.round_dir() == Path("runs/quickstart/round-2")


@pytest.mark.parametrize("override,needle", [
    ("generate.nn=3", "generate.nn: unknown key"),
    ("generate.n=many", "generate.n:"),
    ("generate.backend=tpu", "generate.backend:"),
    ("generate.top_p=1.5", "generate.top_p:"),
    ("nonsense", "expected key.sub=value"),
])
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(UserError) as e:
        load_config(ROOT / "configs/quickstart.yaml", [override])
    assert needle in str(e.value)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: x.jsonl\ngenerate:\n  n: 2\n  temprature: 0.3\n")
    with pytest.raises(UserError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "generate.temprature: unknown key" in str(e.value)


def test_wrong_type_and_missing_required(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  n: [1, 2]\n")
    msg = str(pytest.raises(UserError, load_config, bad).value)
    assert "prompts: required key is missing" in msg and "generate.n:" in msg


def test_secret_never_in_resolved_config(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-live-SECRET123")
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["judge.api_key_env=MY_JUDGE_KEY"])
    text = dump_config(cfg)
    assert "MY_JUDGE_KEY" in text and "SECRET123" not in text
    assert yaml.safe_load(text)["judge"]["api_key_env"] == "MY_JUDGE_KEY"


def test_resolved_config_loads_back(tmp_path):
    """rlaif run's stages read RUN_DIR/config.yaml, where every unset field is written out as null
    (a check's other kinds among them): it must load to the same config."""
    cfg = load_config(ROOT / "configs/quickstart.yaml",
                      ["evaluate.checks={short: {max_words: 40}, no_sorry: {regex: sorry, must_match: false}}"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_api_key_field_is_rejected_in_config(tmp_path):
    bad = tmp_path / "k.yaml"
    bad.write_text("prompts: p.jsonl\njudge:\n  api_key: sk-abc\n")
    msg = str(pytest.raises(UserError, load_config, bad).value)
    assert "judge.api_key: unknown key" in msg and "sk-abc" not in msg


def test_cli_config_error_is_one_line(tmp_path):
    res = rlaif_cli("generate", "--config", "configs/quickstart.yaml", "generate.n=zero")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "configs/quickstart.yaml" in lines[0] and "generate.n" in lines[0]
