"""`rlaif export`: a round's kept pairs as a Hugging Face dataset folder (TRL columns beside rlaif's),
its adapter, each with a card; TRL's DPOTrainer trains a step straight from the exported folder."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import polars as pl
import pytest
import yaml

from conftest import ROOT, finished_adapter, rlaif_cli
from rlaif.errors import UserError
from rlaif.io import PAIRS_SCHEMA, write_json, write_parquet
from rlaif.train.export import export

JUDGE = {"judge_model": "fake-judge", "judge_id": "abc123def456", "backend": "openai", "mode": "pairwise",
         "identity": {"backend": "openai", "model": "fake-judge", "endpoint": "http://127.0.0.1:9/v1"},
         "rubric": {"sha256": "0f0f0f0f0f0f", "first_line": "Prefer numbered steps.", "source": "inline"},
         "position_consistency": 0.9, "longer_wins_rate": 0.6, "invalid_rate": 0.0, "self_judging": False}
CARD = {"stage": "filter", "round": 0, "comparisons_in": 9, "kept": 4,
        "removed": {"invalid": 1, "tie": 2, "inconsistent": 1, "truncated": 1, "empty": 0}, "config": {"min_margin": 0}}


def pairs(n: int, k: int) -> pl.DataFrame:
    return pl.DataFrame([{
        "prompt_id": f"p{i}", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": f"What is {i} plus {i}?"}],
        "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"No idea, maybe {i + 7}?", "chosen_id": f"p{i}-c0",
        "rejected_id": f"p{i}-c1", "margin": 0.5 + i / 10, "consistent": True, "chosen_tokens": 8 + i,
        "rejected_tokens": 6, "round": k} for i in range(n)], schema=PAIRS_SCHEMA)


def write_round(run, k: int, n: int = 4):
    rdir = run / f"round-{k}"
    write_parquet(rdir / "pairs.parquet", pairs(n, k), PAIRS_SCHEMA)
    write_json(rdir / "pairs.card.json", {**CARD, "round": k, "kept": n})
    write_json(rdir / "judge-report.json", JUDGE)
    return rdir


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def run(tmp_path, tiny_model):
    run = tmp_path / "run"
    write_round(run, 0)
    finished_adapter(run, 0, tiny_model, seed=1)
    write_json(run / "calibration" / "judge-abc123def456-pairwise-v2-0123456789.json",
               {"n": 12, "agreement": 0.75, "cohen_kappa": 0.6, "judge_id": "abc123def456"})
    return run


def test_export_then_one_dpo_step_from_the_folder(run, tmp_path, tiny_model):
    out = tmp_path / "exp"
    res = rlaif_cli("export", str(run), "--out", str(out), "round=0")
    assert res.returncode == 0, res.stderr
    import datasets

    ds = datasets.load_from_disk(str(out / "dataset"))
    assert ds.num_rows == 4
    row = ds[1]
    # TRL's conversational preference format with an explicit prompt, beside rlaif's columns
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 plus 1?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "1 plus 1 is 2."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No idea, maybe 8?"}]
    assert (row["prompt_id"], row["chosen_id"], row["margin"], row["chosen_tokens"]) == ("p1", "p1-c0", 0.6, 9)
    from trl.data_utils import is_conversational

    assert is_conversational(row) and "messages" not in ds.column_names
    # the dataset card: Hub metadata plus judge, rubric, funnel, counts, lengths, calibration
    from huggingface_hub import DatasetCard, ModelCard

    meta = DatasetCard.load(out / "dataset" / "README.md").data.to_dict()
    r = meta["rlaif"]
    assert "dpo" in meta["tags"] and meta["size_categories"] == ["n<1K"] and r["pairs"] == 4
    assert r["judge"]["judge_id"] == "abc123def456" and r["judge"]["rubric"]["first_line"] == "Prefer numbered steps."
    assert r["filter"]["removed"]["tie"] == 2 and r["filter"]["comparisons_in"] == 9
    assert r["lengths"]["chosen_tokens_mean"] == 9.5 and r["lengths"]["chosen_longer_share"] == 1.0
    assert r["calibration"]["agreement"] == 0.75 and r["calibration"]["same_judge"] is True
    # the adapter, with a model card; PEFT's pickle of the training arguments is never shared
    card = ModelCard.load(out / "adapter" / "README.md").data.to_dict()
    assert card["library_name"] == "peft" and card["rlaif"]["round"] == 0 and card["rlaif"]["steps"] == 1
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "merged").exists()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["adapter"] == "adapter" and manifest["pairs"] == 4
    # one DPO step straight from the exported folder, continuing the exported adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out / "adapter"),
                                      is_trainable=True)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, bf16=False,
                     gradient_checkpointing=False, max_length=128, logging_steps=1, save_strategy="no",
                     report_to=[], disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.load_from_disk(str(out / "dataset")),
                         processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


def local_paths_run(run, tiny_model, tmp_path) -> dict:
    """Round 0 as a real run leaves it on this machine: a local judge named by its folder, a rubric file,
    the train manifest naming the base model's folder, and PEFT's adapter_config.json naming it too."""
    rubric = tmp_path / "rubrics" / "steps.md"
    rubric.parent.mkdir()
    rubric.write_text("Prefer numbered steps.\n")
    judge_dir = tmp_path / "models" / "Qwen3-0.6B-judge"
    write_json(run / "round-0" / "judge-report.json", {
        **JUDGE, "judge_model": str(judge_dir), "backend": "local", "identity": {"backend": "local", "model": "9f8e"},
        "rubric": {**JUDGE["rubric"], "source": str(rubric)}})
    train = run / "round-0" / "train"
    write_json(train / "train.manifest.json", {
        "stage": "train", "round": 0, "steps": 1, "final": {"loss": 0.69}, "base_model": str(tiny_model),
        "reference_model": str(tiny_model), "adapter": str(train / "adapter"), "adapter_id": "0123abcd"})
    assert json.loads((train / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model)  # what PEFT writes: the local folder
    return {"judge": judge_dir, "rubric": rubric}


def exported_text(out) -> dict:
    return {p: p.read_text() for p in out.rglob("*") if p.suffix in (".md", ".json", ".yaml", ".yml")}


def test_cards_never_name_a_local_path(run, tmp_path, tiny_model):
    paths = local_paths_run(run, tiny_model, tmp_path)
    out = tmp_path / "exp"
    res = rlaif_cli("export", str(run), "--out", str(out), "round=0")
    assert res.returncode == 0, res.stderr
    texts = exported_text(out)
    assert {"README.md", "export.json", "adapter_config.json"} <= {p.name for p in texts}
    for p, text in texts.items():
        for local in (str(tmp_path), str(tiny_model), str(ROOT), str(os.path.expanduser("~")) + "/", "/tmp/"):
            assert local not in text, f"{p.relative_to(out)} names the local path {local}"
    # the folders' names instead, and the cards say where a Hub id would go
    model = (out / "adapter" / "README.md").read_text()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model.name and f"`{tiny_model.name}`" in model
    assert "export.base_model" in model and "adapter_config.json" in model
    assert "base_model" not in yaml.safe_load(model.split("---\n")[1])  # the Hub's key takes repository ids only
    dataset = (out / "dataset" / "README.md").read_text()
    assert f"`{paths['judge'].name}`" in dataset and "export.judge_model" in dataset
    assert front_matter(out / "dataset" / "README.md")["rlaif"]["judge"]["rubric"]["source"] == "steps.md"
    # the training run's own adapter is untouched: only the exported copy is renamed
    assert json.loads((run / "round-0" / "train" / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(tiny_model)


def test_hub_ids_from_the_config_and_the_command_line(run, tmp_path, tiny_model):
    local_paths_run(run, tiny_model, tmp_path)
    (run / "config.yaml").write_text(yaml.safe_dump({"prompts": "p.jsonl", "export": {
        "base_model": "someone/wrong-base", "judge_model": "Qwen/Qwen3-0.6B"}}))
    out = tmp_path / "exp"
    res = rlaif_cli("export", str(run), "--out", str(out), "round=0",
                    "export.base_model=HuggingFaceTB/SmolLM2-135M-Instruct")  # the command line wins
    assert res.returncode == 0, res.stderr
    model = (out / "adapter" / "README.md").read_text()
    meta = front_matter(out / "adapter" / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["rlaif"]["base_model"] == meta["base_model"]
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in model and "wrong-base" not in model
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front_matter(out / "dataset" / "README.md")["rlaif"]["judge"]["judge_model"] == "Qwen/Qwen3-0.6B"
    assert "judged by `Qwen/Qwen3-0.6B`" in (out / "dataset" / "README.md").read_text()
    res = rlaif_cli("export", str(run), "--out", str(out), "export.base_mdl=x")
    assert res.returncode == 2 and "export.base_mdl" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_unfinished_training_exports_no_adapter_and_a_rerun_replaces(run, tmp_path):
    write_round(run, 1, n=2)
    (run / "round-1" / "train" / "adapter").mkdir(parents=True)  # a kill mid-training: no train.manifest.json
    out = tmp_path / "exp"
    export(run, out)  # default: the last round with pairs
    m = json.loads((out / "export.json").read_text())
    assert m["round"] == 1 and m["adapter"] is None and "train.manifest.json missing" in m["why"]
    assert not (out / "adapter").exists()
    assert front_matter(out / "dataset" / "README.md")["rlaif"]["pairs"] == 2
    export(run, out, 0)  # an earlier export is replaced whole
    assert json.loads((out / "export.json").read_text())["round"] == 0 and (out / "adapter").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")] == []  # nothing left aside


def test_export_errors_are_one_line(run, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not an rlaif export"):
        export(run, other, 0)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match=r"round-5: no pairs.parquet"):
        export(run, tmp_path / "x", 5)
    write_parquet(run / "round-2" / "pairs.parquet", pairs(0, 2), PAIRS_SCHEMA)
    with pytest.raises(UserError, match="no kept pairs to export"):
        export(run, tmp_path / "x", 2)
    res = rlaif_cli("export", str(run), "--out", str(tmp_path / "x"), "rnd=1")
    assert res.returncode == 2 and "expected one round=K" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_export_help_ends_with_examples():
    res = rlaif_cli("export", "--help")
    assert res.returncode == 0 and "rlaif export RUN_DIR --out DIR [round=K]" in res.stdout
    assert "rlaif export runs/quickstart --out" in res.stdout[res.stdout.rindex("examples:"):]


# `rlaif export` in its own process, killed (SIGKILL: no cleanup runs) just before the Nth file-system step of
# the replacement (a rename, a swap, a removal), counted from the moment the new export is complete beside DIR.
# argv: run, out, N, mode; mode "no-exchange" plays a file system without renameat2's RENAME_EXCHANGE.
KILLED_EXPORT = """import os, shutil, signal, sys
from pathlib import Path
from rlaif.train import export as ex
kill_at, steps, replacing = int(sys.argv[3]), [0], [False]
def counted(fn):
    def step(*a, **k):
        if replacing[0]:
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            steps[0] += 1
        return fn(*a, **k)
    return step
os.replace, os.rename, shutil.rmtree = counted(os.replace), counted(os.rename), counted(shutil.rmtree)
if hasattr(ex, "_exchange"):
    ex._exchange = counted((lambda a, b: False) if sys.argv[4] == "no-exchange" else ex._exchange)
inner = ex._replace
def replace(*a):
    replacing[0] = True  # from here to the end: the removal of what is left aside counts too
    inner(*a)
ex._replace = replace
ex.export(Path(sys.argv[1]), Path(sys.argv[2]), 0)
"""


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _which_export(folder, refs: dict) -> int:
    """The round of the whole export at folder: every file of that round's export and no other, loadable."""
    import datasets

    k = json.loads((folder / "export.json").read_text())["round"]
    assert _files(folder) == refs[k], f"{folder}: not the whole export of round {k}"
    assert datasets.load_from_disk(str(folder / "dataset")).num_rows == {0: 4, 1: 2}[k]
    return k


@pytest.mark.parametrize("mode", ["exchange", "no-exchange"])
def test_a_kill_at_every_step_of_the_replacement_leaves_the_old_or_the_whole_new_export(run, tmp_path, mode):
    """Issue 18, item 8: DIR is the old export (round 1) or the whole new one (round 0) after a kill at any
    step, and the next export completes with nothing left aside. Where the file system cannot swap two
    folders in one step ("no-exchange"), DIR is briefly absent between two renames: then the old export is
    whole beside it, and the next start of `rlaif export` puts it back before anything else."""
    write_round(run, 1, n=2)
    refs = {k: _files(export(run, tmp_path / f"ref-{k}", k)) for k in (0, 1)}
    out = tmp_path / "exp"
    leftovers = lambda: [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")]  # noqa: E731
    for n in range(8):
        export(run, out, 1)  # the old export; this also cleans up after the previous kill
        assert _which_export(out, refs) == 1 and leftovers() == []
        res = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(run), str(out), str(n), mode], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if res.returncode == 0:  # no step left to kill at: it ran to the end
            # swap, remove; or try the swap, rename old aside, rename new in, remove both (kills came at each)
            assert n == {"exchange": 2, "no-exchange": 5}[mode]
            assert _which_export(out, refs) == 0 and leftovers() == []
            break
        assert res.returncode == -9, res.stderr[-2000:]
        if out.exists() or mode == "exchange":
            assert _which_export(out, refs) in (0, 1), f"kill before step {n}"
        else:  # between the two renames: the old export whole, aside, and restored by the next start
            aside = [p for p in tmp_path.glob(".exp.old-*/*")]
            assert len(aside) == 1 and _which_export(aside[0], refs) == 1, f"kill before step {n}: {leftovers()}"
            with pytest.raises(UserError, match="round-5: no pairs.parquet"):
                export(run, out, 5)
            assert _which_export(out, refs) == 1 and leftovers() == []
        export(run, out, 0)  # a rerun completes
        assert _which_export(out, refs) == 0 and leftovers() == [], f"kill before step {n}"
    else:
        raise AssertionError("the export never ran to its end")
