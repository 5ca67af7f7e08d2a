"""`rlaif compare RUN_DIR RUN_DIR ...`: runs side by side in one report, OUT/compare.md with PNG plots.

    rlaif compare runs/quickstart runs/ipo --out compare/

Reads only the run folders' files, as the run report does (report.py's readers): per round and per
run the win rate and LC win rate with their intervals, the independent checks, mean answer length,
pairs kept, judge cost and calls, and wall time per stage; the resolved config keys whose values
differ; and, where two runs share held-out prompts and SFT answers, whether their last common
round's win rates differ beyond their intervals. A missing file is a "-" cell, never a crash.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from rlaif.errors import UserError
from rlaif.evaluate.metrics import bootstrap_ci
# report.py's readers and formatters, so a cell reads the same here as in report.md
from rlaif.evaluate.report import (_ci, _finish, _get, _isnum, _lc_cell, _num, _pct, _read_round, _rounds,
                                   headline)
from rlaif.io import json_object, write_text

DEFAULT_OUT = "compare"
COLUMNS = ("round", "run", "win rate (95% CI)", "LC win rate", "checks policy (SFT)", "mean tokens policy / SFT",
           "pairs kept", "judge USD train / eval", "judge calls", "wall s generate / judge / train / eval")
ABSENT = type("Absent", (), {"__repr__": lambda self: "(absent)"})()  # a key one config does not have
N_BOOT, SEED = 2000, 0


def read_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    rounds = [_read_round(k, p) for k, p in _rounds(run_dir)]
    for r in rounds:  # judge.manifest.json: the judge stage's calls and wall time, written when it finished
        r["judge_manifest"] = json_object(r["dir"] / "judge.manifest.json")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    return {"dir": run_dir, "name": run_dir.name, "rounds": rounds,
            "config": config if isinstance(config, dict) else None}


def _key(part) -> str:
    part = str(part)  # a key with dots (a model name under judge.prices) quoted, as overrides write it
    return f'"{part}"' if "." in part or not part else part


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"beta": 0.1}} -> {"train.beta": 0.1}; an empty mapping is a value ({})."""
    out = {}
    for k, v in d.items():
        key = prefix + _key(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(runs: list[dict]) -> dict[str, list]:
    """Dotted key -> one value per run (ABSENT where a run lacks it), for the keys whose resolved
    values differ. run_dir is left out: every run has its own by construction."""
    flat = [flatten(r["config"] or {}) for r in runs]
    keys = set().union(*flat) - {"run_dir"}
    # An empty mapping in one run ({}) and entries under it in another: the entries say what differs
    keys = sorted(k for k in keys if not any(o.startswith(k + ".") for o in keys))
    table = {k: [f.get(k, ABSENT) for f in flat] for k in keys}
    return {k: vals for k, vals in table.items()
            if len({json.dumps(v, sort_keys=True, default=repr) for v in vals}) > 1}


def _value(v) -> str:
    return "(absent)" if v is ABSENT else f"`{json.dumps(v, default=str)}`"


def _checks(e: dict) -> str:
    c = e.get("checks")
    if not isinstance(c, dict) or not c:
        return "-"
    return ", ".join(f"{n} {_pct(x.get('policy'))} ({_pct(x.get('sft'))})" if isinstance(x, dict) else f"{n} -"
                     for n, x in c.items())


def _win(e: dict) -> str:
    lo, hi = _ci(e)
    win = _pct(e.get("win_rate"))
    return win + (f" ({100 * lo:.0f}–{100 * hi:.0f})" if win != "-" and lo is not None else "")


def _row(name: str, r: dict) -> list[str]:
    e, j, jm = r["eval"], r["judge"], r["judge_manifest"]
    usd = f"{_num(j.get('cost_usd'), '{:.4f}')} / {_num(e.get('judge_cost_usd'), '{:.4f}')}"
    calls = jm.get("calls") if _isnum(jm.get("calls")) else j.get("calls")
    judge_s = jm.get("wall_s") if _isnum(jm.get("wall_s")) else j.get("seconds_this_run")
    wall = " / ".join(_num(x) for x in (_get(r["gen"], "timing", "wall_s"), judge_s,
                                         _get(r["train"], "timing", "wall_s"), _get(e, "timing", "wall_s")))
    lengths = f"{_num(e.get('policy_mean_tokens'))} / {_num(e.get('sft_mean_tokens'))}" if e else "-"
    return [str(r["round"]), name, _win(e), _lc_cell(e), _checks(e), lengths, _num(r["card"].get("kept")), usd,
            _num(calls), wall]


def _sft_answers(run: dict) -> dict[str, str] | None:
    """prompt_id -> sha256 of the SFT answers to it (RUN_DIR/eval-sft, written by the evaluate stage)."""
    files = sorted((run["dir"] / "eval-sft" / "candidates").glob("part-*.parquet"))
    try:
        df = pl.read_parquet(files, columns=["prompt_id", "response"]) if files else None
    except (pl.exceptions.PolarsError, OSError):
        return None
    if df is None:
        return None
    groups = df.group_by("prompt_id").agg(pl.col("response").sort())
    return {p: hashlib.sha256(json.dumps(rs).encode()).hexdigest() for p, rs in groups.iter_rows()}


def _outcomes(r: dict) -> dict[str, float] | None:
    """prompt_id -> the round's outcome for the policy vs SFT (1 win, 0.5 tie, 0 loss; eval/outcomes.parquet)."""
    try:
        out = pl.read_parquet(r["dir"] / "eval" / "outcomes.parquet", columns=["prompt_id", "y"])
    except (pl.exceptions.PolarsError, OSError):
        return None
    return dict(out.group_by("prompt_id").agg(pl.col("y").mean()).iter_rows())


def paired_difference(ya, yb, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[float, float, float]:
    """(mean of ya − yb, 95% interval): a paired percentile bootstrap over prompts (Efron & Tibshirani
    1993, ch. 13 and 16), as the checks' policy − SFT interval (checks.compare_shares): both runs'
    outcomes on a drawn prompt are resampled together, so what the prompts share (their difficulty,
    the same SFT answer) cancels and only how the two policies differ on them is left."""
    d = np.asarray(ya, dtype=float) - np.asarray(yb, dtype=float)
    lo, hi = bootstrap_ci(d, n_boot, seed)
    return float(d.mean()), lo, hi


def _last_common(a: dict, b: dict) -> tuple[dict, dict] | None:
    ea = {r["round"]: r for r in a["rounds"] if _isnum(r["eval"].get("win_rate"))}
    eb = {r["round"]: r for r in b["rounds"] if _isnum(r["eval"].get("win_rate"))}
    k = max(set(ea) & set(eb), default=None)
    return None if k is None else (ea[k], eb[k])


def significance(a: dict, b: dict) -> str:
    """One sentence: do a's and b's win rates in the last round both evaluated differ beyond their intervals?"""
    head = f"{a['name']} vs {b['name']}"
    pair = _last_common(a, b)
    if pair is None:
        return f"{head}: no round evaluated in both."
    ra, rb = pair
    head += f", round {ra['round']} (the last both evaluated)"
    sa, sb = _sft_answers(a), _sft_answers(b)
    if sa is None or sb is None:
        return f"{head}: no comparison: no SFT answers in {(b if sa else a)['dir'] / 'eval-sft'}."
    shared = sorted(set(sa) & set(sb))
    same = [p for p in shared if sa[p] == sb[p]]
    if not shared or len(same) < len(shared):
        return (f"{head}: no comparison: the SFT answers differ on {len(shared) - len(same)} of {len(shared)} "
                "shared held-out prompts (another SFT model or evaluate setting), so the two win rates have "
                "no common baseline.")
    wa, wb = ra["eval"]["win_rate"], rb["eval"]["win_rate"]
    oa, ob = _outcomes(ra), _outcomes(rb)
    if oa is not None and ob is not None and (both := [p for p in same if p in oa and p in ob]):
        d, lo, hi = paired_difference([oa[p] for p in both], [ob[p] for p in both])
        verdict = "differ beyond the interval" if lo > 0 or hi < 0 else "not clearly different (the interval holds 0)"
        return (f"{head}: win rate {_pct(wa)} vs {_pct(wb)}; on the {len(both)} held-out prompts both judged with "
                f"the same SFT answers the difference is {100 * d:+.0f} pts (95% paired bootstrap CI "
                f"{100 * lo:+.0f} to {100 * hi:+.0f}): {verdict}.")
    (la, ha), (lb, hb) = _ci(ra["eval"]), _ci(rb["eval"])
    if None in (la, ha, lb, hb):
        return f"{head}: no comparison: a win rate without its interval."
    # Without per-prompt outcomes: two 95% intervals that do not overlap differ at well under 5%
    # (a conservative rule: overlapping intervals can still differ; Schenker & Gentleman 2001).
    apart = ha < lb or hb < la
    verdict = ("the intervals do not overlap: they differ beyond the intervals" if apart
               else "they overlap: not clearly different")
    return (f"{head}: win rate {_pct(wa)} ({100 * la:.0f}–{100 * ha:.0f}) vs {_pct(wb)} ({100 * lb:.0f}–"
            f"{100 * hb:.0f}); no per-prompt outcomes on disk, so the rule is whether the two 95% intervals "
            f"overlap: {verdict}.")


def _plot(runs: list[dict], path: Path, key: str, ci_key: str | None, title: str, ylabel: str,
          sft: bool = False) -> bool:
    """One line per run over rounds (intervals as error bars, runs nudged apart so bars stay readable);
    with `sft`, each run's SFT value dashed in the same colour. False when no run has the figure."""
    import matplotlib.pyplot as plt

    pts = [[r for r in run["rounds"] if _isnum(r["eval"].get(key))] for run in runs]
    if not any(pts):
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.2 / max(len(runs), 1)
    for i, (run, rs) in enumerate(zip(runs, pts)):
        if not rs:
            continue
        ks = np.array([r["round"] for r in rs], dtype=float) + (i - (len(runs) - 1) / 2) * width
        y = np.array([r["eval"][key] for r in rs], dtype=float) * (100 if ci_key else 1)
        ci = [r["eval"].get(ci_key) if ci_key else None for r in rs]
        ok = [isinstance(c, list) and len(c) == 2 and all(_isnum(x) for x in c) for c in ci]
        lo = np.array([100 * c[0] if o else v for c, o, v in zip(ci, ok, y)])  # no interval: a zero-length bar
        hi = np.array([100 * c[1] if o else v for c, o, v in zip(ci, ok, y)])
        ax.errorbar(ks, y, yerr=[y - lo, hi - y], marker="o", capsize=4, color=f"C{i}", label=run["name"])
        if sft:
            s = [(k, r["eval"]["sft_mean_tokens"]) for k, r in zip(ks, rs) if _isnum(r["eval"].get("sft_mean_tokens"))]
            if s:
                ax.plot(*zip(*s), linestyle="--", color=f"C{i}", label=f"{run['name']} SFT")
    if ci_key:
        ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="parity with SFT")
    _finish(fig, ax, path, title, ylabel, [r["round"] for rs in pts for r in rs])
    return True


def _plots(runs: list[dict], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")  # no display on batch machines; set before pyplot is first imported
    made = [(t, name) for t, name, args in (
        ("Win rate vs SFT per round (95% CI)", "winrate.png",
         ("win_rate", "win_rate_ci", "win rate vs SFT", "win rate (%)")),
        ("LC win rate per round (95% CI)", "lc_winrate.png",
         ("lc_win_rate", "lc_win_rate_ci", "length-controlled win rate vs SFT", "LC win rate (%)")),
        ("Mean answer length per round", "length.png",
         ("policy_mean_tokens", None, "policy mean tokens (SFT dashed)", "mean tokens")))
        if _plot(runs, out / name, *args, sft=name == "length.png")]
    return made


def write_compare(run_dirs: list[Path], out: Path = Path(DEFAULT_OUT)) -> Path:
    """Write OUT/compare.md and its PNGs for these run folders; returns the markdown's path."""
    runs = [read_run(Path(d)) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # two folders with one name: tell them apart by their path
        for r in runs:
            r["name"] = str(r["dir"])
    out = Path(out)
    lines = [f"# Compare: {', '.join(r['name'] for r in runs)}", ""]
    lines += [f"- {r['name']} ({r['dir']}): {headline(r['rounds'])}" for r in runs]
    lines += ["", "## Do the last rounds' win rates differ?", ""]
    lines += [f"- {significance(a, b)}" for a, b in itertools.combinations(runs, 2)]
    lines += ["", "Rule: where both runs judged the same held-out prompts against the same SFT answers "
              "(RUN_DIR/eval-sft, compared by hash), a paired bootstrap of the difference in win rate over those "
              f"prompts ({N_BOOT} resamples of round-K/eval/outcomes.parquet); the two differ when its 95% "
              "interval excludes 0. Without per-prompt outcomes, when the two 95% intervals do not overlap."]
    diff = config_diff(runs)
    missing = [r["name"] for r in runs if r["config"] is None]
    lines += ["", "## What differs between the configs", "",
              f"The resolved keys (RUN_DIR/config.yaml) whose values differ: {len(diff)}. run_dir differs by "
              "construction and is left out."
              + (f" No readable config.yaml in: {', '.join(missing)}." if missing else "")]
    if diff:
        lines += ["", "| key | " + " | ".join(r["name"] for r in runs) + " |", "|" + "---|" * (len(runs) + 1)]
        lines += [f"| `{k}` | " + " | ".join(_value(v) for v in vals) + " |" for k, vals in diff.items()]
    lines += ["", "## Per round", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    ks = sorted({r["round"] for run in runs for r in run["rounds"]})
    lines += ["| " + " | ".join(_row(run["name"], r)) + " |" for k in ks for run in runs for r in run["rounds"]
              if r["round"] == k]
    lines += ["", "Win rate and LC: policy vs SFT on the held-out prompts (eval/eval.json; ties count half). Checks: "
              "the share of policy answers passing each evaluate.checks rule (SFT's in brackets). Judge USD: the "
              "training judge (judge-report.json) / the evaluation's judge calls (eval.json); judge calls: the "
              "training judge's. Wall time per stage from its manifest."]
    for title, name in _plots(runs, out):
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    return write_text(out / "compare.md", "\n".join(lines) + "\n")
