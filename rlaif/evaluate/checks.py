"""Independent checks: properties of an answer that the user tests without asking the judge.

    evaluate:
      checks:
        numbered_list: {regex: '(?m)^\\s*1[.)]\\s'}
        no_apology: {regex: '(?i)\\bsorry\\b', must_match: false}
        short: {max_words: 120}
        is_json: {json: true}
        polite: {function: mypkg.checks:polite}
        solves: {tests: true}          # the prompt's `tests` run against the answer's code (sandbox)
        answer: {reference: numeric}   # the answer's last number equals the prompt's `reference`

Each check is applied to the policy's and the SFT model's held-out answer to every prompt; the
evaluate stage writes the share that passes on each side, their difference and a paired bootstrap
interval of it to eval.json (`checks`), and one row per prompt to eval/checks.parquet. A check
that rises while the judge's win rate rises says the policy moved toward the rubric itself, not
only toward what this judge happens to like (length, style, its own phrasing).

A tests check passes when every test of the prompt passes, so with one answer per prompt per side
its shares are pass@1 of the policy and of SFT, and the report's first line leads with them. The
same kinds score candidates for judge.backend=verifier (score_one: a tests check scores the share
of tests passed there). How code is found, run and matched: runnable.py and docs/sandbox.md.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from rlaif.errors import UserError
from rlaif.evaluate import runnable as R

RUNNABLE = {"tests", "reference"}  # kinds decided by the prompt's own data (its tests, its reference answer)
LIMITS = ("max_words", "min_words", "max_sentences", "min_sentences")
# A sentence ends at . ! ? or … followed by whitespace or the end, or at a line break (a list item or
# heading is its own unit); a piece with no letter ("1." of a numbered list) is not a sentence.
# Abbreviations ("e.g. this") over-count: a simple, stated rule rather than a language model's guess.
_SENTENCE_END = re.compile(r"[.!?\u2026]+(?=\s|$)|\n")
_LETTER = re.compile(r"[^\W\d_]")


def kinds(spec) -> list[str]:
    """Which kinds a check spec (config.CheckConfig) sets; the config requires exactly one."""
    found = [k for k in ("regex", "function") if getattr(spec, k) is not None]
    if any(getattr(spec, k) is not None for k in LIMITS):
        found.append("limits")
    found += ["json"] if spec.is_json else []
    found += ["tests"] if getattr(spec, "tests", False) else []
    return found + (["reference"] if getattr(spec, "reference", None) else [])


def load_function(ref: str) -> Callable:
    """`module:function` -> the callable; ValueError with one line saying what is wrong.

    The current directory is searched first, as `python -m` does, so a checks file beside the
    config works the same under the `rlaif` script and under `python -m rlaif`."""
    mod, sep, name = ref.partition(":")
    if not sep or not mod or not name:
        raise ValueError(f"{ref!r}: expected module:function, e.g. mypkg.checks:polite")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod)
    except Exception as e:  # the user's module may fail in any way while importing
        raise ValueError(f"{ref!r}: cannot import {mod}: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{ref!r}: {mod} has no function {name}")
    return fn


def word_count(text: str) -> int:
    return len(text.split())  # whitespace-separated, as `wc -w`


def sentence_count(text: str) -> int:
    return sum(1 for piece in _SENTENCE_END.split(text) if _LETTER.search(piece))


def _is_json(text: str) -> bool:
    try:
        json.loads(text.strip())
    except ValueError:
        return False
    return True


def predicate(spec) -> Callable[[list[dict], str], bool]:
    """The check as a function of (prompt messages, response); not for the kinds that need the
    prompt's data (tests, reference: score_one and measure run those)."""
    if set(kinds(spec)) & RUNNABLE:
        raise ValueError(f"{kinds(spec)[0]} checks need the prompt's data: use score_one")
    if spec.regex is not None:
        pat = re.compile(spec.regex)
        return lambda _, r: (pat.search(r) is not None) == spec.must_match
    if spec.is_json:
        return lambda _, r: _is_json(r)
    if spec.function is not None:
        return load_function(spec.function)
    bounds = [(word_count, spec.min_words, spec.max_words), (sentence_count, spec.min_sentences, spec.max_sentences)]
    return lambda _, r: all((lo is None or count(r) >= lo) and (hi is None or count(r) <= hi)
                            for count, lo, hi in bounds)


def describe(spec) -> str:
    """A short label for reports: what the check tests."""
    if spec.regex is not None:
        return f"regex {spec.regex!r} {'matches' if spec.must_match else 'does not match'}"
    if spec.is_json:
        return "valid JSON"
    if spec.function is not None:
        return f"{spec.function}(prompt, response)"
    if getattr(spec, "tests", False):
        return "the prompt's tests pass (pass@1)"
    if getattr(spec, "reference", None):
        return f"matches the prompt's reference ({spec.reference})"
    return ", ".join(f"{k.replace('_', ' ')} {getattr(spec, k)}" for k in LIMITS if getattr(spec, k) is not None)


def apply(name: str, spec, rows: list[tuple[str, list[dict], str]]) -> np.ndarray:
    """Pass (True) / fail per (prompt_id, messages, response); a user function that raises or
    does not return a bool is one line naming the check and the prompt."""
    test = predicate(spec)
    where = f"evaluate.checks.{name}"
    return np.array([_decide(where, spec, test, pid, messages, response) for pid, messages, response in rows],
                    dtype=bool)


def _decide(name: str, spec, test, pid, messages, response) -> bool:
    try:
        ok = test(messages, response)
    except Exception as e:  # the user's code: report where, not a traceback
        raise UserError(f"{name}: {spec.function} raised {type(e).__name__}: {e} (prompt_id {pid!r})") from None
    if not isinstance(ok, (bool, np.bool_)):
        raise UserError(f"{name}: {spec.function} returned {type(ok).__name__}, not a bool (prompt_id {pid!r})")
    return bool(ok)


_PREDICATES: dict[int, tuple] = {}  # id(spec) -> (spec, its predicate): score_one imports a function once


def score_one(spec, chat: list[dict], response: str, data: dict | None, sandbox, *, name: str = "check",
              pid: str | None = None, concurrency: int | None = None, cache=None) -> tuple[float, dict]:
    """(score in [0, 1], detail) of one reply. tests: the share of the prompt's tests passed by the
    reply's code (rlaif.sandbox.extract_code), detail {passed, total, tests: [{status, wall_s, stderr}]},
    0 with a note when the prompt has none; reference: 1 or 0 (runnable.match_reference); any other
    kind: 1 or 0 by its predicate. data: prompt_data's {tests, reference}; sandbox: a SandboxConfig;
    name: how an error names the check (e.g. judge.checks.solves)."""
    kind, data = kinds(spec)[0], data or {}
    if kind == "tests":
        if not data.get("tests"):
            return 0.0, {"note": "the prompt has no tests: scored 0"}
        from rlaif.sandbox import extract_code

        (outs,), _ = R.run_jobs([(extract_code(response), data["tests"])], sandbox, cache, concurrency)
        k = sum(o["status"] == "pass" for o in outs)
        return k / len(outs), {"passed": k, "total": len(outs), "tests": outs}
    if kind == "reference":
        if data.get("reference") is None:
            return 0.0, {"note": "the prompt has no reference: scored 0"}
        ok, why = R.match_reference(spec.reference, response, data["reference"])
        return float(ok), {"reason": why}
    if id(spec) not in _PREDICATES:
        _PREDICATES[id(spec)] = (spec, predicate(spec))
    ok = _decide(name, spec, _PREDICATES[id(spec)][1], pid, chat, response)
    return float(ok), {"reason": f"{describe(spec)}: {'passes' if ok else 'fails'}"}


def compare_shares(policy, sft, n_boot: int, seed: int) -> dict:
    """Shares passing per side and a paired bootstrap interval of policy − SFT.

    Paired: both answers to one prompt are resampled together (the resampled statistic is the
    mean of the per-prompt differences), so the interval reflects how the policy changed answers
    to the same prompts, not the spread of two unrelated samples. Percentile interval (Efron &
    Tibshirani 1993, ch. 13), through metrics.bootstrap_ci."""
    from rlaif.evaluate.metrics import bootstrap_ci

    p, s = np.asarray(policy, dtype=float), np.asarray(sft, dtype=float)
    if p.size == 0:
        return {"policy": None, "sft": None, "diff": None, "diff_ci": [None, None], "n": 0}
    lo, hi = bootstrap_ci(p - s, n_boot, seed)
    return {"policy": float(p.mean()), "sft": float(s.mean()), "diff": float(p.mean() - s.mean()),
            "diff_ci": [lo, hi], "n": int(p.size)}


EXEC_CACHE = "executions.sqlite"  # beside eval/checks.parquet: test outcomes keyed on sha256(code, test, limits)


def measure(cfg, matchups: pl.DataFrame, out: Path | None = None) -> dict:
    """eval.json's `checks` for one round: {NAME: {check, kind, policy, sft, diff, diff_ci, n, ...}};
    with `out`, also one row per prompt (prompt_id, NAME_policy, NAME_sft; a tests check adds
    NAME_policy_share, NAME_sft_share: the share of its tests passed) written there. Tests and
    reference checks read the held-out prompts' columns (prompts.prompt_data); code runs in
    cfg.sandbox, and with `out` its outcomes are kept in executions.sqlite beside it, so a rerun
    whose answers did not change executes nothing."""
    specs = cfg.evaluate.checks
    if not specs:
        return {}
    m = matchups.sort("prompt_id")
    chats = [[{"role": x["role"], "content": x["content"]} for x in msgs] for msgs in m["messages"].to_list()]
    ids = m["prompt_id"].to_list()
    texts = {"policy": m["policy_text"].to_list(), "sft": m["sft_text"].to_list()}
    data = _heldout_data(cfg) if any(set(kinds(s)) & RUNNABLE for s in specs.values()) else {}
    res, cols, cache = {}, {"prompt_id": ids}, None
    try:
        for name, spec in specs.items():
            kind, extra = kinds(spec)[0], {}
            if kind == "tests":
                if cache is None and out is not None:
                    cache = R.ExecCache(Path(out).with_name(EXEC_CACHE))
                (pol, sft), shares, extra = R.pass_tests(cfg.sandbox, ids, data, texts, cache)
                cols[f"{name}_policy_share"], cols[f"{name}_sft_share"] = shares
            elif kind == "reference":
                pol, sft, extra = R.match_all(spec.reference, ids, data, texts)
            else:
                pol, sft = (apply(name, spec, list(zip(ids, chats, texts[side]))) for side in ("policy", "sft"))
            res[name] = {"check": describe(spec), "kind": kind,
                         **compare_shares(pol, sft, cfg.evaluate.n_boot, cfg.seed), **extra}
            cols[f"{name}_policy"], cols[f"{name}_sft"] = pol.tolist(), sft.tolist()
    finally:
        if cache is not None:
            cache.close()
    if out is not None:
        from rlaif.io import write_parquet

        write_parquet(out, pl.DataFrame(cols))
    return res


def _heldout_data(cfg) -> dict[str, dict]:
    from rlaif.prompts import prompt_args, prompt_data

    path, split, columns, dedup, _ = prompt_args(cfg, heldout=True)
    return prompt_data(path, split, columns, dedup)


# ----------------------------------------------------------------------------- in the run report

def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _ok(c) -> bool:
    ci = c.get("diff_ci") if isinstance(c, dict) else None
    return (isinstance(c, dict) and all(_isnum(c.get(k)) for k in ("policy", "sft", "diff"))
            and isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci))


def pass_at_1(checks) -> str | None:
    """'pass@1 SFT → policy: 12.5% → 20.0% (diff +7.5 pts, 95% CI [-2.5, +17.5])' from eval.json's
    tests checks (their shares are pass@1: one answer per prompt per side); None without one."""
    found = [(n, c) for n, c in (checks or {}).items() if isinstance(c, dict) and c.get("kind") == "tests"] \
        if isinstance(checks, dict) else []
    parts = []
    for name, c in found:
        label = f"pass@1 ({name})" if len(found) > 1 else "pass@1"
        if not _ok(c):
            parts.append(f"{label} SFT → policy: -")
            continue
        lo, hi = c["diff_ci"]
        parts.append(f"{label} SFT → policy: {100 * c['sft']:.1f}% → {100 * c['policy']:.1f}% "
                     f"(diff {100 * c['diff']:+.1f} pts, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                     f"{c['n']} problems)")
    return "; ".join(parts) or None


def headline(checks, lead: bool = True) -> str | None:
    """'numbered_list 12% → 56% (rose +44 pts, 95% CI +25 to +62), …' for the report's first line:
    SFT's share, then the policy's, and whether the paired interval says it moved; pass@1 first
    when there is a tests check (pass_at_1), unless lead=False (a caller that puts it first itself)."""
    if not isinstance(checks, dict) or not checks:
        return None
    first, parts = pass_at_1(checks) if lead else None, []
    for name, c in checks.items():
        if isinstance(c, dict) and c.get("kind") == "tests":
            continue  # led by pass@1 above
        if not _ok(c):
            parts.append(f"{name} -")
            continue
        lo, hi = c["diff_ci"]
        verb = "rose " if lo > 0 else "fell " if hi < 0 else "no clear change, "  # the interval decides
        parts.append(f"{name} {100 * c['sft']:.0f}% → {100 * c['policy']:.0f}% ({verb}{100 * c['diff']:+.0f} pts, "
                     f"95% CI {100 * lo:+.0f} to {100 * hi:+.0f})")
    rest = "checks SFT → policy: " + ", ".join(parts) if parts else None
    return "; ".join(x for x in (first, rest) if x) or None


def plot(rounds: list[dict], path: Path) -> bool:
    """checks.png: the share of answers passing each check per round (policy solid, SFT dashed) and
    policy − SFT with its 95% interval. False when no round has a readable check."""
    names = list(dict.fromkeys(n for r in rounds for n, c in (r["eval"].get("checks") or {}).items() if _ok(c)))
    if not names:
        return False
    import matplotlib.pyplot as plt

    from rlaif.io import atomic_write

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.3 / max(len(names), 1)
    for i, name in enumerate(names):
        pts = [(r["round"], r["eval"]["checks"][name]) for r in rounds
               if _ok((r["eval"].get("checks") or {}).get(name))]
        ks = np.array([k for k, _ in pts], dtype=float)
        pol, sft, d = (np.array([100 * c[key] for _, c in pts]) for key in ("policy", "sft", "diff"))
        ci = np.array([[100 * x for x in c["diff_ci"]] for _, c in pts])
        left.plot(ks, pol, marker="o", color=f"C{i}", label=f"{name} (policy)")
        left.plot(ks, sft, linestyle="--", color=f"C{i}", label=f"{name} (SFT)")
        x = ks + (i - (len(names) - 1) / 2) * width  # side by side, not on top of each other
        right.errorbar(x, d, yerr=[d - ci[:, 0], ci[:, 1] - d], marker="o", capsize=4, color=f"C{i}", label=name)
    right.axhline(0, color="grey", linestyle="--", linewidth=1)
    ks = sorted({r["round"] for r in rounds})
    for ax, title, ylabel in ((left, "independent checks: share passing", "answers passing (%)"),
                              (right, "policy − SFT (95% paired bootstrap CI)", "percentage points")):
        ax.set(title=title, ylabel=ylabel, xlabel="round", xticks=ks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return True
