"""`rlaif compare RUN_DIR...` (rlaif/evaluate/compare.py): two or more finished runs side by side.

The run folders are written here as the stages leave them (config.yaml from the real config loader,
real parquet for the SFT answers and the per-prompt outcomes, the JSON files of each stage): compare
reads only files, so no model or judge is needed."""
from __future__ import annotations

import json
import random
import shlex

import numpy as np
import polars as pl
import pytest

from conftest import ROOT, rlaif_cli
from rlaif.config import dump_config, load_config
from rlaif.evaluate import compare as CMP
from rlaif.evaluate.metrics import OUTCOME_SCHEMA, bootstrap_ci
from rlaif.io import CANDIDATES_SCHEMA, write_json, write_parquet

N = 60  # held-out prompts


def _sft(run, texts):
    rows = [{"prompt_id": f"h{i}", "candidate_id": f"sft-{i}", "round": 0,
             "messages": [{"role": "user", "content": f"question {i}"}], "response": t, "num_tokens": 10 + i % 7,
             "finish_reason": "stop", "model": "demo", "adapter": None, "seed": 0} for i, t in enumerate(texts)]
    write_parquet(run / "eval-sft" / "candidates" / "part-00000.parquet",
                  pl.DataFrame(rows, schema=CANDIDATES_SCHEMA), CANDIDATES_SCHEMA)
    write_json(run / "eval-sft" / "candidates.manifest.json", {"counts": {"candidates": len(rows)}})


def _round(run, k, y, *, kept=20, cost=0.01, calls=100, walls=(1.0, 2.0, 3.0, 4.0), tokens=50.0, checks=None):
    """Round k's files as the stages write them; eval.json's win rate and interval computed from y."""
    rdir = run / f"round-{k}"
    y = np.asarray(y, dtype=float)
    n = len(y)
    out = pl.DataFrame({"prompt_id": [f"h{i}" for i in range(n)], "policy_id": [f"p{k}-{i}" for i in range(n)],
                        "sft_id": [f"sft-{i}" for i in range(n)], "policy_first": ["policy"] * n,
                        "sft_first": ["policy"] * n, "y": y, "len_policy": [50] * n, "len_sft": [40] * n})
    write_parquet(rdir / "eval" / "outcomes.parquet", out, pl.Schema(OUTCOME_SCHEMA))
    write_json(rdir / "eval" / "eval.json", {
        "round": k, "win_rate": float(y.mean()), "win_rate_ci": list(bootstrap_ci(y, 2000, 0)),
        "lc_win_rate": float(y.mean()) - 0.05, "lc_win_rate_ci": [float(y.mean()) - 0.15, float(y.mean()) + 0.05],
        "policy_mean_tokens": tokens, "sft_mean_tokens": 40.0, "n_prompts": len(y), "n_identical": 0,
        "judge_cost_usd": cost / 10, "checks": checks or {}, "timing": {"wall_s": walls[3]}})
    write_json(rdir / "candidates.manifest.json", {"counts": {"candidates": 80}, "timing": {"wall_s": walls[0]}})
    write_json(rdir / "judge-report.json", {"cost_usd": cost, "calls": calls, "seconds_this_run": 0.5})
    write_json(rdir / "judge.manifest.json", {"stage": "judge", "round": k, "calls": calls, "wall_s": walls[1]})
    write_json(rdir / "pairs.card.json", {"kept": kept, "removed": {"tie": 3}})
    write_json(rdir / "train" / "train.manifest.json", {"stage": "train", "timing": {"wall_s": walls[2]}})


def _run(tmp_path, name, overrides=(), sft=None):
    run = tmp_path / name
    run.mkdir()
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [f"run_dir={run}", *overrides])
    (run / "config.yaml").write_text(dump_config(cfg))
    _sft(run, sft or [f"SFT answer {i}" for i in range(N)])
    return run


def _ys(wins: int, n: int = N, seed: int = 0) -> np.ndarray:
    """n outcomes, `wins` of them policy wins and the rest SFT wins, in a shuffled order."""
    y = np.array([1.0] * wins + [0.0] * (n - wins))
    np.random.default_rng(seed).shuffle(y)
    return y


# ----------------------------------------------------------------------------- what differs

def test_config_diff_lists_exactly_the_changed_keys(tmp_path):
    base = _run(tmp_path, "base")
    ipo = _run(tmp_path, "ipo", ["train.loss_type=ipo", "train.beta=0.25", "judge.prices.gpt-4.1-mini=[0.4, 1.6]"])
    diff = CMP.config_diff([CMP.read_run(base), CMP.read_run(ipo)])
    assert set(diff) == {"train.loss_type", "train.beta", 'judge.prices."gpt-4.1-mini"'}, diff
    assert diff["train.beta"] == [0.1, 0.25] and diff["train.loss_type"] == ["sigmoid", "ipo"], diff
    assert diff['judge.prices."gpt-4.1-mini"'][0] is CMP.ABSENT
    # The same config twice differs nowhere, though run_dir does.
    twin = _run(tmp_path, "twin")
    assert CMP.config_diff([CMP.read_run(base), CMP.read_run(twin)]) == {}
    text = CMP.write_compare([base, ipo], tmp_path / "out").read_text()
    section = text[text.index("## What differs between the configs"):].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| key")]
    assert sorted(r.split(" | ")[0][2:].strip("`") for r in rows) == sorted(diff), rows
    assert "run_dir" in section and "left out" in section  # said, not silently dropped


# ----------------------------------------------------------------------------- the table

def _row(text: str, k: int, name: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {k} | {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_values_come_from_the_files(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    checks = {"short": {"check": "max_words 50", "policy": 0.85, "sft": 0.4, "diff": 0.45, "diff_ci": [0.3, 0.6],
                        "n": N}}
    _round(a, 0, _ys(33), kept=37, cost=0.1234, calls=412, walls=(11.0, 22.0, 33.0, 44.0), tokens=61.0,
           checks=checks)
    _round(b, 0, _ys(40), kept=29, cost=0.5, calls=300)
    _round(b, 1, _ys(45), kept=31, cost=0.25, calls=290)
    text = CMP.write_compare([a, b], tmp_path / "out").read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| round | run |"))
    cols = [c.strip() for c in header.strip().strip("|").split("|")]
    row = dict(zip(cols, _row(text, 0, "a")))
    e = json.loads((a / "round-0" / "eval" / "eval.json").read_text())
    lo, hi = e["win_rate_ci"]
    assert row["win rate (95% CI)"] == f"{100 * 33 / N:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})"
    assert row["pairs kept"] == "37" and row["judge calls"] == "412"
    assert row["judge USD train / eval"] == "0.1234 / 0.0123"
    assert row["wall s generate / judge / train / eval"] == "11 / 22 / 33 / 44"
    assert row["mean tokens policy / SFT"] == "61 / 40"
    assert row["checks policy (SFT)"] == "short 85% (40%)"
    assert dict(zip(cols, _row(text, 1, "b")))["pairs kept"] == "31"
    assert "| 1 | a |" not in text  # a round a run does not have is no row, not a row of dashes
    (b / "round-1" / "pairs.card.json").unlink()  # a missing file is a "-" cell, never a crash
    text = CMP.write_compare([a, b], tmp_path / "out").read_text()
    assert dict(zip(cols, _row(text, 1, "b")))["pairs kept"] == "-"


# ----------------------------------------------------------------------------- beyond the intervals

def _py_paired_ci(ya, yb, n_boot=4000, seed=7):
    """An independent paired bootstrap: plain Python, its own RNG, prompts drawn one by one."""
    rng, n, stats = random.Random(seed), len(ya), []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(ya[i] - yb[i] for i in idx) / n)
    stats.sort()
    return stats[int(0.025 * n_boot)], stats[int(0.975 * n_boot) - 1]


def test_paired_interval_matches_an_independent_computation():
    ya, yb = _ys(44, seed=1), _ys(30, seed=2)
    d, lo, hi = CMP.paired_difference(ya, yb)
    plo, phi = _py_paired_ci(list(ya), list(yb))
    assert d == pytest.approx((44 - 30) / N)
    assert lo == pytest.approx(plo, abs=0.025) and hi == pytest.approx(phi, abs=0.025), ((lo, hi), (plo, phi))


def test_significance_statement_flips_with_the_effect(tmp_path):
    base = _run(tmp_path, "base")
    big = _run(tmp_path, "big", ["train.beta=0.3"])
    small = _run(tmp_path, "small", ["train.beta=0.2"])
    for i, (run, wins) in enumerate(((base, 27), (big, 48), (small, 29))):
        _round(run, 0, _ys(20, seed=3))
        _round(run, 1, _ys(wins, seed=4 + i))  # each policy wins and loses on its own prompts
    far = CMP.significance(CMP.read_run(base), CMP.read_run(big))
    near = CMP.significance(CMP.read_run(base), CMP.read_run(small))
    assert "round 1" in far and "differ beyond" in far and "paired bootstrap" in far, far
    assert "round 1" in near and "not clearly different" in near, near
    # The same verdict by the independent computation: does its interval exclude 0?
    for run, text in ((big, far), (small, near)):
        ya = pl.read_parquet(base / "round-1" / "eval" / "outcomes.parquet")["y"].to_list()
        yb = pl.read_parquet(run / "round-1" / "eval" / "outcomes.parquet")["y"].to_list()
        plo, phi = _py_paired_ci(ya, yb)
        assert (plo > 0 or phi < 0) == ("differ beyond" in text), (plo, phi, text)
    # Other SFT answers (another model or eval setting): no common baseline, no statement of difference.
    other = _run(tmp_path, "other", sft=[f"another SFT answer {i}" for i in range(N)])
    _round(other, 0, _ys(48, seed=4))
    text = CMP.significance(CMP.read_run(base), CMP.read_run(other))
    assert "SFT answers differ" in text and "differ beyond" not in text, text
    # No outcomes on disk: the stated fallback rule, the two 95% intervals overlapping or not.
    for run in (base, big):
        (run / "round-1" / "eval" / "outcomes.parquet").unlink()
    text = CMP.significance(CMP.read_run(base), CMP.read_run(big))
    assert "intervals do not overlap" in text and "differ beyond" in text, text


# ----------------------------------------------------------------------------- the command

def _is_png(path) -> bool:
    import matplotlib.image as mpimg

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(path).std() > 0


def test_cli_writes_the_report_and_plots(tmp_path):
    base, ipo = _run(tmp_path, "base"), _run(tmp_path, "ipo", ["train.loss_type=ipo"])
    for run, wins in ((base, 30), (ipo, 50)):
        _round(run, 0, _ys(25, seed=5))
        _round(run, 1, _ys(wins, seed=6), tokens=70.0 if run is ipo else 55.0)
    out = tmp_path / "cmp"
    res = rlaif_cli("compare", str(base), str(ipo), "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = (out / "compare.md").read_text()
    assert "train.loss_type" in text and "ipo" in text and "differ beyond" in text
    for png in ("winrate.png", "lc_winrate.png", "length.png"):
        assert _is_png(out / png) and f"]({png})" in text, png
    assert str(out / "compare.md") in res.stdout
    res = rlaif_cli("compare", str(base), str(tmp_path / "nope"))
    assert res.returncode == 2 and "nope: no such run folder" in res.stderr and "Traceback" not in res.stderr


def test_compare_help_ends_with_examples_that_parse():
    from rlaif.cli import _parser

    res = rlaif_cli("compare", "--help")
    assert res.returncode == 0 and "compare/" in res.stdout, res.stdout  # the default --out is said
    tail = res.stdout[res.stdout.rindex("examples:"):].replace("\\\n", " ")
    lines = [shlex.split(ln, comments=True) for ln in tail.splitlines()[1:] if "rlaif compare" in ln]
    assert len(lines) >= 2
    for words in lines:
        args = _parser().parse_args(words[words.index("rlaif") + 1:])
        assert args.cmd == "compare" and len(args.run_dirs) >= 2
