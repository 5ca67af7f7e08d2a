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


# ------------------------------------------------- issue 18, item 11: overrides a newcomer writes

def test_price_key_with_dots_is_one_key():
    """A model name has dots: judge.prices is a dict field, so the rest of the path is one key
    (quoting it works too)."""
    cfg = load_config(ROOT / "configs/gpu-8b.yaml", ["judge.prices.gpt-4.1-mini=[0.5, 2.0]",
                                                      'judge.prices."o4-mini.2025"=[1.1, 4.4]'])
    assert cfg.judge.prices == {"gpt-4.1-mini": (0.5, 2.0), "o4-mini.2025": (1.1, 4.4)}
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["evaluate.checks.short.max_words=9"])
    assert cfg.evaluate.checks["short"].max_words == 9  # a dict of sections still nests after its key


def test_override_error_is_blamed_on_the_override_not_the_file(tmp_path):
    msg = str(pytest.raises(UserError, load_config, ROOT / "configs/quickstart.yaml", ["generate.n=zero"]).value)
    assert msg.startswith("override generate.n=zero"), msg
    assert "generate.n:" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: x.jsonl\ngenerate:\n  n: zero\n")
    msg = str(pytest.raises(UserError, load_config, bad, ["generate.max_tokens=5"]).value)
    assert msg.startswith(f"{bad}:") and "override generate" not in msg, msg  # the file's own mistake names the file


@pytest.mark.parametrize("override,hint", [
    ("generate.temprature=0.3", "did you mean generate.temperature?"),
    ("promts=x.jsonl", "did you mean prompts?"),
    ("judge.api_key_environment=K", "did you mean judge.api_key_env?"),
])
def test_misspelt_key_gets_did_you_mean(override, hint):
    msg = str(pytest.raises(UserError, load_config, ROOT / "configs/quickstart.yaml", [override]).value)
    assert "unknown key" in msg and hint in msg, msg


def test_misspelt_key_in_file_gets_did_you_mean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: x.jsonl\ntrain:\n  learning_rat: 1.0e-5\n")
    msg = str(pytest.raises(UserError, load_config, bad).value)
    assert "train.learning_rat: unknown key; did you mean train.learning_rate?" in msg, msg


def test_config_module_points_at_the_readme_not_missing_notes():
    """DESIGN.md and FIELD-NOTES are not in this repository: a reader must be sent to what is."""
    for path in (ROOT / "rlaif" / "config.py", ROOT / "rlaif" / "cli.py", *CONFIGS):
        text = path.read_text()
        assert "FIELD-NOTES" not in text and "DESIGN.md" not in text, path


# ------------------------------------------------- issue 18, item 10: configs that fail hours in

def test_loss_type_is_checked_against_the_installed_trl():
    from rlaif.train.losses import trl_loss_types

    names = trl_loss_types()
    assert {"sigmoid", "ipo", "robust", "exo_pair", "sigmoid_norm", "apo_zero"} <= set(names)
    from trl import DPOConfig  # the list read without importing trl is the one trl itself documents

    assert all(f"`'{n}'`" in DPOConfig.__dataclass_fields__["loss_type"].metadata["help"] for n in names)
    msg = str(pytest.raises(UserError, load_config, ROOT / "configs/quickstart.yaml", ["train.loss_type=simpo"]).value)
    assert "train.loss_type" in msg and "SimPO is not a DPO loss" in msg and "CPOTrainer" in msg, msg
    msg = str(pytest.raises(UserError, load_config, ROOT / "configs/quickstart.yaml",
                            ["train.loss_type=sigmoid,sigmod"]).value)
    assert "'sigmod'" in msg and "did you mean sigmoid?" in msg and "sigmoid_norm" in msg, msg


@pytest.mark.parametrize("overrides,needle", [
    (["train.loss_type=exo_pair"], "exo_pair needs train.label_smoothing > 0"),
    (["train.loss_type=robust"], "robust without train.label_smoothing is plain DPO"),
    (["train.loss_type=robust", "train.label_smoothing=0.5"], "below 0.5"),
    (["train.loss_type=sigmoid", "train.label_smoothing=0.1"], "only robust, exo_pair, aot and aot_unpaired read it"),
    (["train.loss_type=sigmoid,sft", "train.loss_weights=[1.0]"], "one weight per loss"),
])
def test_loss_settings_that_trl_would_reject_or_ignore_fail_at_load(overrides, needle):
    msg = str(pytest.raises(UserError, load_config, ROOT / "configs/quickstart.yaml", overrides).value)
    assert needle in msg, msg


def test_loss_settings_trl_accepts_load():
    base = ROOT / "configs/quickstart.yaml"
    assert load_config(base, ["train.loss_type=robust", "train.label_smoothing=0.1"]).train.label_smoothing == 0.1
    assert load_config(base, ["train.loss_type=exo_pair", "train.label_smoothing=1e-3"]).train.loss_type == "exo_pair"
    cfg = load_config(base, ["train.loss_type=sigmoid,bco_pair,sft", "train.loss_weights=[0.8, 0.2, 1.0]"])  # MPO
    assert cfg.train.loss_weights == [0.8, 0.2, 1.0]


def test_gradient_checkpointing_defaults_to_on_with_cuda():
    from rlaif.train.stage import gradient_checkpointing

    t = load_config(ROOT / "configs/quickstart.yaml").train
    assert t.gradient_checkpointing is None
    assert gradient_checkpointing(t, cuda=True) is True and gradient_checkpointing(t, cuda=False) is False
    off = load_config(ROOT / "configs/quickstart.yaml", ["train.gradient_checkpointing=false"]).train
    assert gradient_checkpointing(off, cuda=True) is False


def test_gpu_config_fits_one_80gb_gpu():
    """The estimate written in configs/gpu-8b.yaml's comment is rlaif plan's (rlaif/train/memory.py) for
    Llama-3.1-8B's config.json, with full fp32 logits: the bound the comment states."""
    from rlaif.train.memory import peak, read_dims, settings, train_memory

    cfg = load_config(ROOT / "configs/gpu-8b.yaml")
    assert cfg.train.gradient_checkpointing in (None, True)  # None: on with CUDA
    terms = train_memory(read_dims(ROOT / "tests/assets/llama-3.1-8b"), settings(cfg, cuda=True), logits="full")
    need = peak(terms) / 1e9
    assert need < 70, f"{need:.0f} GB: leave headroom below 80 GB for the allocator and CUDA context"
    text = (ROOT / "configs/gpu-8b.yaml").read_text()
    assert f"~{round(need)} GB" in text, "the config's comment states the same estimate"


def test_constitutional_config_ships_the_readme_example():
    cfg = load_config(ROOT / "configs/constitutional.yaml")
    assert cfg.pairs.source == "both" and len(cfg.judge.principles) >= 3
    assert cfg.judge.rubric == "configs/rubrics/harmlessness.md" and (ROOT / cfg.judge.rubric).is_file()
    assert cfg.judge.mode != "checklist" or not cfg.revise.confirm  # confirmation needs pairwise or score
    assert "configs/constitutional.yaml" in (ROOT / "README.md").read_text()


# ------------------------------------------------- issue 18, item 10: a local server without a key

def test_no_key_is_explicit_and_the_default_key_goes_to_openai_only():
    base = ROOT / "configs/quickstart.yaml"
    local = ["judge.backend=openai", "judge.base_url=http://127.0.0.1:8000/v1", "judge.model=m"]
    cfg = load_config(base, [*local, "judge.api_key_env=null"])
    assert cfg.judge.api_key_env is None
    msg = str(pytest.raises(UserError, load_config, base, local).value)
    assert "judge: base_url points at 127.0.0.1" in msg and "api_key_env: null" in msg, msg
    assert load_config(base, ["judge.backend=openai"]).judge.api_key_env == "OPENAI_API_KEY"  # OpenAI's own endpoint
    assert load_config(base, [*local, "judge.api_key_env=MY_KEY"]).judge.api_key_env == "MY_KEY"
    loaded = load_config(base, [*local, "judge.api_key_env=null"])
    assert yaml.safe_load(dump_config(loaded))["judge"]["api_key_env"] is None
