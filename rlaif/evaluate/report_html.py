"""RUN_DIR/report.html: report.md's headline and rounds table as one page a team can hand round, with
what the judge cost, held-out answers side by side and the judge's calibration.

Written by rlaif.evaluate.report.write_report beside report.md (`rlaif report RUN_DIR`, `rlaif run`).
Self-contained: the plots are data: URIs, the CSS is inline, there is no script, and a
Content-Security-Policy meta forbids every fetch but data: images, so the file opens from disk, mail
or a shared drive exactly as written. Every text from a run (candidate answers, prompts, rationales,
file names) is HTML-escaped: candidate text is hostile. Reads only files the stages wrote; ledgers
are opened read-only (SQLite `mode=ro`), so writing the report never writes beside them.
"""
from __future__ import annotations

import base64
import json
import math
import sqlite3
from html import escape
from pathlib import Path

import polars as pl

from rlaif.io import json_object, write_text

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
N_EXAMPLES = 3
REVISE_KINDS = ("critique", "revision")
STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1300px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.headline{font-size:1.15em;background:#eef5ff;padding:.6em .8em;
border-left:4px solid #3a78d8}.note{color:#555;font-size:.9em}.pair{display:grid;grid-template-columns:1fr 1fr;
gap:.8em}.text{white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;border:1px solid #ddd;padding:.5em;
font-family:ui-monospace,monospace;font-size:.9em}section.example{border-top:1px solid #ddd;margin:1em 0;
padding-top:.5em}img{max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 560px;max-width:660px}h3{margin-bottom:.2em}"""


def _e(x) -> str:
    return escape("-" if x is None else str(x), quote=True)


def _parquet(path: Path) -> pl.DataFrame | None:
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    try:
        return pl.read_parquet(files) if files and all(f.exists() for f in files) else None
    except (pl.exceptions.PolarsError, OSError):
        return None


def _ledger_rows(path: Path) -> list[tuple]:
    """(key, kind, input tokens, output tokens, USD) of every call with a reply, read without writing
    anything beside the ledger. mode=ro alone still creates -wal and -shm files for a WAL database,
    so: no -wal file means no writer is live and the last one checkpointed on close, and the file is
    read as immutable (sqlite.org/uri.html); a -wal file holds commits not in the main file yet, so
    it is read with mode=ro, through the -wal and -shm that are already there."""
    q = "SELECT key, kind, input_tokens, output_tokens, cost_usd FROM calls WHERE status='done'"
    live = Path(f"{path}-wal").exists()
    for flags in (["mode=ro"] if live else ["mode=ro&immutable=1", "mode=ro"]):
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True)
            try:
                return db.execute(q).fetchall()
            finally:
                db.close()
        except sqlite3.Error:  # a writer that started since (immutable read a changing file): read it live
            continue
    return []


def _keys(path: Path) -> set[str]:
    df = _parquet(path)
    return set(df["key"].to_list()) if df is not None and "key" in df.columns else set()


def _shared_ledger(run_dir: Path) -> Path | None:
    """judge.ledger from RUN_DIR/config.yaml: a ledger shared across runs, when the config names one."""
    try:
        import yaml

        p = ((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("judge") or {}).get("ledger")
    except (OSError, ValueError, AttributeError, ImportError):
        return None
    return Path(p) if p and Path(p).exists() else None


def _sum(rows: list[tuple], source: str, where: str) -> dict:
    return {"source": source, "calls": len(rows), "input_tokens": sum(r[2] or 0 for r in rows),
            "output_tokens": sum(r[3] or 0 for r in rows), "usd": sum(r[4] or 0.0 for r in rows), "from": where}


def costs(run_dir: Path) -> list[dict]:
    """Calls, tokens and dollars per source, each with the files it was read from."""
    run_dir = Path(run_dir)
    rdirs = sorted(p for p in run_dir.glob("round-*") if p.is_dir())
    eval_keys = set().union(*(_keys(d / "eval" / "judgments.parquet") for d in rdirs))
    run_keys = eval_keys.union(*(_keys(d / "judgments.parquet") for d in rdirs))
    rows: dict[str, tuple] = {}  # by key: one call is one call, whichever ledger holds it
    for d in rdirs:
        rows.update((r[0], r) for r in _ledger_rows(d / "judge-ledger.sqlite"))
    shared = _shared_ledger(run_dir)
    if shared is not None:  # shared across runs: only this run's calls (those in its judgments files)
        rows.update((r[0], r) for r in _ledger_rows(shared) if r[0] in run_keys)
    found = [str(d.relative_to(run_dir) / "judge-ledger.sqlite") for d in rdirs if (d / "judge-ledger.sqlite").exists()]
    ledgers = ", ".join(found + ([f"{shared} (this run's keys)"] if shared else [])) or "no ledger"
    revise = [r for r in rows.values() if r[1] in REVISE_KINDS]
    ev = [r for r in rows.values() if r[1] not in REVISE_KINDS and r[0] in eval_keys]
    judge = [r for r in rows.values() if r[1] not in REVISE_KINDS and r[0] not in eval_keys]
    cal = run_dir / "calibration" / "judge-ledger.sqlite"
    gen = [json_object(d / "candidates.manifest.json") for d in rdirs]
    ans = [json_object(p) for p in [run_dir / "eval-sft" / "candidates.manifest.json",
                                   *(d / "eval" / "answers" / "candidates.manifest.json" for d in rdirs)]]

    def sampled(ms: list[dict]) -> int:
        return sum(t for m in ms if isinstance(t := (m.get("tokens") or {}).get("completion"), int))

    return [
        {"source": "generate", "calls": None, "input_tokens": None, "output_tokens": sampled(gen), "usd": None,
         "from": "tokens.completion in round-K/candidates.manifest.json (sampled locally: no judge cost)"},
        {"source": "generate (evaluate answers)", "calls": None, "input_tokens": None, "output_tokens": sampled(ans),
         "usd": None, "from": "tokens.completion in eval-sft/ and round-K/eval/answers/candidates.manifest.json"},
        _sum(judge, "judge", f"{ledgers}: calls with a reply, less evaluate's and revise's"),
        _sum(ev, "evaluate", f"{ledgers}: the calls whose keys are in round-K/eval/judgments.parquet"),
        _sum(revise, "revise", f"{ledgers}: critique and revision calls"),
        _sum(_ledger_rows(cal) if cal.exists() else [], "calibration",
             "calibration/judge-ledger.sqlite: calls with a reply" if cal.exists() else "no calibration/ ledger"),
    ]


def _cost_table(rows: list[dict]) -> str:
    def n(x, fmt="{:,}"):
        return "-" if x is None else fmt.format(x)

    body = "".join(
        f'<tr id="cost-{_e(r["source"].split()[0] if r["source"] != "generate (evaluate answers)" else "answers")}">'
        f"<td>{_e(r['source'])}</td><td>{n(r['calls'])}</td><td>{n(r['input_tokens'])}</td>"
        f"<td>{n(r['output_tokens'])}</td><td>{n(r['usd'], '{:.4f}')}</td><td class=note>{_e(r['from'])}</td></tr>"
        for r in rows)
    paid = [r for r in rows if r["usd"] is not None]
    total = (f"<tr><th>total judge</th><th>{sum(r['calls'] for r in paid):,}</th>"
             f"<th>{sum(r['input_tokens'] for r in paid):,}</th><th>{sum(r['output_tokens'] for r in paid):,}</th>"
             f"<th>{sum(r['usd'] for r in paid):.4f}</th><th></th></tr>")
    return ("<h2>Judge cost and tokens</h2><table><tr><th>source</th><th>calls</th><th>input tokens</th>"
            f"<th>output tokens</th><th>USD</th><th>from</th></tr>{body}{total}</table>"
            "<p class=note>Calls with a reply only (failed calls are retried, never paid). A call is counted once "
            "whichever stage asked for it: a verdict the ledger already held cost nothing the second time.</p>")


def _strength(r: dict) -> float:
    """How far apart the judge put the two answers: the score gap (score mode) or, pairwise, 1 when
    both orders named the same winner and 0 for a tie or orders that disagree."""
    if r.get("score_policy") is not None and r.get("score_sft") is not None:
        return abs(r["score_policy"] - r["score_sft"])
    return abs((r.get("y") if r.get("y") is not None else 0.5) - 0.5) * 2


def pick(outcomes: list[dict], differ: dict[str, list[str]], n: int = N_EXAMPLES) -> list[dict]:
    """The prompt whose checks differ most between the answers, then the judge's most decisive
    verdicts, policy wins and SFT wins in turn; identical answers never (nothing to compare)."""
    rows = [r for r in outcomes if r.get("policy_first") != "identical"]
    key = lambda r: (-len(differ.get(r["prompt_id"], [])), -_strength(r), r["prompt_id"])  # noqa: E731
    chosen = sorted((r for r in rows if differ.get(r["prompt_id"])), key=key)[:1]
    rest = sorted((r for r in rows if r not in chosen and _strength(r) > 0),
                  key=lambda r: (-_strength(r), r["prompt_id"]))
    wins = [r for r in rest if (r.get("y") or 0) > 0.5]
    losses = [r for r in rest if r not in wins]
    turn = 0
    while len(chosen) < n and (wins or losses):
        side = wins if (turn % 2 == 0 and wins) or not losses else losses
        chosen.append(side.pop(0))
        turn += 1
    return chosen


def _verdict(r: dict) -> str:
    if r.get("score_policy") is not None and r.get("score_sft") is not None:
        return f"judge scores: policy {r['score_policy']:.2f}, SFT {r['score_sft']:.2f}"
    pf, sf = r.get("policy_first"), r.get("sft_first")
    if pf == "identical":
        return "identical answers (a tie, never sent to the judge)"
    if pf == sf:
        return {"policy": "the judge preferred the policy in both orders", "sft": "the judge preferred SFT in both "
                "orders", "tie": "the judge called a tie in both orders"}.get(pf, f"judge: {pf} in both orders")
    return f"the orders disagree (policy shown first: {pf}; SFT shown first: {sf}): a tie"


def _prompt(messages) -> str:
    if isinstance(messages, str):  # a bare prompt string
        return messages
    return "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in (messages or []) if isinstance(m, dict))


def _examples(run_dir: Path, rdir: Path, k: int) -> str:
    edir = rdir / "eval"
    out, pol, sft = _parquet(edir / "outcomes.parquet"), _parquet(edir / "answers" / "candidates"), \
        _parquet(run_dir / "eval-sft" / "candidates")
    if out is None or pol is None or sft is None:
        return f"<h3>Round {k}</h3><p class=note>Not evaluated yet (no readable eval/outcomes.parquet and answers).</p>"
    if missing := {"prompt_id", "policy_id", "sft_id", "y"} - set(out.columns):
        return f"<h3>Round {k}</h3><p class=note>eval/outcomes.parquet lacks {_e(sorted(missing))}.</p>"
    texts = {r["candidate_id"]: r for df in (pol, sft) for r in df.iter_rows(named=True)}
    ck = _parquet(edir / "checks.parquet")
    names = sorted(c[:-7] for c in (ck.columns if ck is not None else []) if c.endswith("_policy"))
    passes = {r["prompt_id"]: r for r in ck.iter_rows(named=True)} if ck is not None else {}
    differ = {p: [c for c in names if r.get(f"{c}_policy") != r.get(f"{c}_sft")] for p, r in passes.items()}
    jd = _parquet(edir / "judgments.parquet")
    why = {} if jd is None or "rationale" not in jd.columns else {
        (r["prompt_id"], r["order"]): r["rationale"]
        for r in jd.filter(pl.col("rationale").is_not_null()).iter_rows(named=True)}
    html, chosen = [f"<h3>Round {k}</h3>"], pick(out.to_dicts(), differ)
    if not chosen:
        html.append(f"<p class=note>No held-out prompt of {out.height} where the judge or the checks told the "
                    "answers apart.</p>")
    for r in chosen:
        p, s = texts.get(r["policy_id"], {}), texts.get(r["sft_id"], {})
        checks = "; ".join(f"{c}: policy {'passes' if passes[r['prompt_id']][c + '_policy'] else 'fails'}, "
                           f"SFT {'passes' if passes[r['prompt_id']][c + '_sft'] else 'fails'}"
                           for c in names if r["prompt_id"] in passes)
        reasons = "".join(f"<p class=note>judge's reasoning ({_e(o)}): {_e(why[(r['prompt_id'], o)])}</p>"
                          for o in ("ab", "ba") if (r["prompt_id"], o) in why)
        html.append(
            f'<section class="example" id="r{k}-{_e(r["prompt_id"])}"><b>{_e(r["prompt_id"])}</b> <span class=note>'
            f'(chosen: {"the checks differ" if differ.get(r["prompt_id"]) else "a decisive verdict"})</span>'
            f'<div class="text">{_e(_prompt(p.get("messages") or s.get("messages")))}</div>'
            f"<p>{_e(_verdict(r))}" + (f"<br>checks: {_e(checks)}" if checks else "") + f"</p>{reasons}"
            f'<div class="pair"><div><b>SFT</b> ({_e(s.get("num_tokens"))} tokens)<div class="text">'
            f'{_e(s.get("response"))}</div></div><div><b>Policy, round {k}</b> ({_e(p.get("num_tokens"))} tokens)'
            f'<div class="text">{_e(p.get("response"))}</div></div></div></section>')
    return "".join(html)


def _safe_examples(run_dir: Path, rdir: Path, k: int) -> str:
    """A round whose eval files are damaged or of another shape is one line, never a crashed report."""
    try:
        return _examples(run_dir, rdir, k)
    except (KeyError, TypeError, ValueError, AttributeError, pl.exceptions.PolarsError) as e:
        return f"<h3>Round {k}</h3><p class=note>Examples unreadable: {_e(type(e).__name__)}: {_e(e)}</p>"


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927) score interval of a proportion: sound near 0 and 1 and for small n."""
    d = 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


def _calibration(run_dir: Path) -> str:
    cal = json_object(run_dir / "calibration" / "calibration.json")
    if not cal:
        return ""
    a, n = cal.get("agreement"), cal.get("n")
    ci = cal.get("agreement_ci")
    src = "calibration.json"
    if not (isinstance(ci, list) and len(ci) == 2) and isinstance(a, (int, float)) and 0 <= a <= 1 \
            and isinstance(n, int) and n > 0:
        ci, src = _wilson(a, n), "Wilson 95% score interval over the gold pairs"
    agree = (f"{100 * a:.0f}% of {n} gold pairs" if isinstance(a, (int, float)) else "-") + \
        (f" (95% CI {100 * ci[0]:.0f}–{100 * ci[1]:.0f}%, {src})" if isinstance(ci, (list, tuple)) else "")
    kappa = cal.get("cohen_kappa")
    kappa = f"{kappa:.2f}" if isinstance(kappa, (int, float)) else kappa
    head = (f'<section id="calibration"><h2>Judge calibration on human labels</h2>'
            f'<p>Judge {_e(cal.get("judge_model"))} '
            f"({_e(cal.get('judge_id'))}) agreed with people on {_e(agree)}; Cohen's kappa "
            f"{_e(kappa)}. From rlaif calibrate ({_e(cal.get('created_at'))}).</p>")
    path = run_dir / "calibration" / "disagreements.jsonl"
    rows, bad = [], 0
    try:
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line)) if line.strip() else None
            except ValueError:
                bad += 1
    except OSError:
        return head + ("<p class=note>No calibration/disagreements.jsonl (a newer `rlaif calibrate` writes it)."
                       "</p></section>")
    items = "".join(
        f"<section class=disagreement><b>{_e(d.get('prompt_id'))}</b>: people said <b>{_e(d.get('human'))}</b>, "
        f"the judge <b>{_e(d.get('judge'))}</b><div class=text>{_e(_prompt(d.get('messages')))}</div>"
        f"<div class=pair><div><b>A</b><div class=text>{_e(d.get('response_a'))}</div></div><div><b>B</b>"
        f"<div class=text>{_e(d.get('response_b'))}</div></div></div>"
        + (f"<p class=note>judge's reasoning: {_e(d['rationale'])}</p>" if d.get("rationale") else "") + "</section>"
        for d in rows if isinstance(d, dict))
    tail = f"<p class=note>{bad} unreadable line(s) in disagreements.jsonl left out.</p>" if bad else ""
    return head + f"<h3>Pairs where the judge disagreed with people ({len(rows)})</h3>{items}{tail}</section>"


def write(run_dir: Path, rounds: list[dict], headline: str, columns, rows: list[list[str]],
          plots: list[tuple[str, str]]) -> Path:
    """RUN_DIR/report.html from report.py's rounds, headline, table rows and plot files."""
    table = ("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    examples = "".join(_safe_examples(run_dir, r["dir"], r["round"]) for r in rounds)
    how = ("<p class=note>How these were chosen: for each evaluated round, first the held-out prompt where the most "
           "of the user's checks (evaluate.checks) pass on one answer and fail on the other, then those where the "
           "judge was most decisive (the same winner in both orders; in score mode the largest score gap), a policy "
           f"win and an SFT win in turn, {N_EXAMPLES} in all; identical answers are skipped. Read from "
           "round-K/eval/outcomes.parquet, checks.parquet, judgments.parquet, answers/ and eval-sft/.</p>")
    imgs = "".join(f"<figure><img alt=\"{_e(t)}\" src=\"data:image/png;base64,"
                   f"{base64.b64encode((run_dir / name).read_bytes()).decode()}\">"
                   f"<figcaption>{_e(t)}</figcaption></figure>"
                   for t, name in plots if (run_dir / name).exists())
    imgs = f"<h2>Plots</h2><div class=plots>{imgs}</div>" if imgs else ""
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>rlaif report: {_e(run_dir.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Run report: {_e(run_dir.name)}</h1><p class=headline>{_e(headline)}</p><h2>Rounds</h2>{table}"
            f"{_cost_table(costs(run_dir))}<h2>Held-out answers side by side</h2>{how}{examples}"
            f"{_calibration(run_dir)}{imgs}</body></html>\n")
    return write_text(run_dir / "report.html", page)
