"""Independent checks: properties of an answer that the user tests without asking the judge.

    evaluate:
      checks:
        numbered_list: {regex: '(?m)^\\s*1[.)]\\s'}
        no_apology: {regex: '(?i)\\bsorry\\b', must_match: false}
        short: {max_words: 120}
        is_json: {json: true}
        polite: {function: mypkg.checks:polite}

Each check is applied to the policy's and the SFT model's held-out answer to every prompt; the
evaluate stage writes the share that passes on each side, their difference and a paired bootstrap
interval of it to eval.json (`checks`), and one row per prompt to eval/checks.parquet. A check
that rises while the judge's win rate rises says the policy moved toward the rubric itself, not
only toward what this judge happens to like (length, style, its own phrasing).
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
    return found + (["json"] if spec.is_json else [])


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
    """The check as a function of (prompt messages, response)."""
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
    return ", ".join(f"{k.replace('_', ' ')} {getattr(spec, k)}" for k in LIMITS if getattr(spec, k) is not None)


def apply(name: str, spec, rows: list[tuple[str, list[dict], str]]) -> np.ndarray:
    """Pass (True) / fail per (prompt_id, messages, response); a user function that raises or
    does not return a bool is one line naming the check and the prompt."""
    test, out = predicate(spec), []
    for pid, messages, response in rows:
        try:
            ok = test(messages, response)
        except Exception as e:  # the user's code: report where, not a traceback
            raise UserError(f"evaluate.checks.{name}: {spec.function} raised {type(e).__name__}: {e} "
                            f"(prompt_id {pid!r})") from None
        if not isinstance(ok, (bool, np.bool_)):
            raise UserError(f"evaluate.checks.{name}: {spec.function} returned {type(ok).__name__}, "
                            f"not a bool (prompt_id {pid!r})")
        out.append(bool(ok))
    return np.array(out, dtype=bool)


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


def measure(cfg, matchups: pl.DataFrame, out: Path | None = None) -> dict:
    """eval.json's `checks` for one round: {NAME: {check, policy, sft, diff, diff_ci, n}}; with
    `out`, also one row per prompt (prompt_id, NAME_policy, NAME_sft) written there."""
    specs = cfg.evaluate.checks
    if not specs:
        return {}
    m = matchups.sort("prompt_id")
    chats = [[{"role": x["role"], "content": x["content"]} for x in msgs] for msgs in m["messages"].to_list()]
    ids = m["prompt_id"].to_list()
    res, cols = {}, {"prompt_id": ids}
    for name, spec in specs.items():
        pol = apply(name, spec, list(zip(ids, chats, m["policy_text"].to_list())))
        sft = apply(name, spec, list(zip(ids, chats, m["sft_text"].to_list())))
        res[name] = {"check": describe(spec), **compare_shares(pol, sft, cfg.evaluate.n_boot, cfg.seed)}
        cols[f"{name}_policy"], cols[f"{name}_sft"] = pol.tolist(), sft.tolist()
    if out is not None:
        from rlaif.io import write_parquet

        write_parquet(out, pl.DataFrame(cols))
    return res


# ----------------------------------------------------------------------------- in the run report

def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _ok(c) -> bool:
    ci = c.get("diff_ci") if isinstance(c, dict) else None
    return (isinstance(c, dict) and all(_isnum(c.get(k)) for k in ("policy", "sft", "diff"))
            and isinstance(ci, list) and len(ci) == 2 and all(_isnum(x) for x in ci))


def headline(checks) -> str | None:
    """'numbered_list 12% → 56% (rose +44 pts, 95% CI +25 to +62), …' for the report's first line:
    SFT's share, then the policy's, and whether the paired interval says it moved."""
    if not isinstance(checks, dict) or not checks:
        return None
    parts = []
    for name, c in checks.items():
        if not _ok(c):
            parts.append(f"{name} -")
            continue
        lo, hi = c["diff_ci"]
        verb = "rose " if lo > 0 else "fell " if hi < 0 else "no clear change, "  # the interval decides
        parts.append(f"{name} {100 * c['sft']:.0f}% → {100 * c['policy']:.0f}% ({verb}{100 * c['diff']:+.0f} pts, "
                     f"95% CI {100 * lo:+.0f} to {100 * hi:+.0f})")
    return "checks SFT → policy: " + ", ".join(parts)


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
