"""report.html (rlaif/evaluate/report_html.py): a hand-written finished run folder (real parquet
files, real SQLite ledgers written through rlaif's Ledger, no model), the report written by
write_report, then the page opened from a file:// URL in the real headless Chromium the review
page's tests use. Hostile candidate text must show as text; the page must fetch nothing."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from rlaif.evaluate import report_html
from rlaif.evaluate.report import write_report
from rlaif.io import CANDIDATES_SCHEMA, JUDGMENTS_SCHEMA, write_json, write_parquet
from rlaif.judge.ledger import Ledger
from test_review import browser  # noqa: F401  (the real headless Chromium fixture)

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# prompt -> (policy answer, SFT answer, verdict with policy shown first, with SFT shown first,
#            numbered_list passes policy / SFT)
HELDOUT = {
    "h1": ("1. Preheat.\n2. Bake. " + HOSTILE, "1. Bake it.", "policy", "policy", True, True),  # policy wins both
    "h2": ("Maybe.", "It is 4, since 2 + 2 = 4.", "sft", "sft", False, False),  # SFT wins both
    "h3": ("1. Rinse\n2. Repeat", "Rinse and repeat.", "policy", "sft", True, False),  # inconsistent; checks differ
    "h4": ("Same words.", "Same words.", "identical", "identical", False, False),  # identical: never sent
    "h5": ("Blue.", "It is blue.", "tie", "tie", False, False),  # a tie both ways
}
# ledger rows: (key, kind, input tokens, output tokens, USD, status)
JUDGE_CALLS = [("j1", "pairwise", 100, 5, 0.001, "done"), ("j2", "pairwise", 120, 6, 0.002, "done"),
               ("j3", "pairwise", 90, 0, 0.5, "error")]  # no reply: never paid, never counted
REVISE_CALLS = [("r1", "critique", 50, 40, 0.0004, "done"), ("r2", "revision", 60, 80, 0.0008, "done")]
CAL_CALLS = [(f"c{i}", "pairwise", 200, 4, 0.003, "done") for i in range(3)]
DISAGREE = [
    {"prompt_id": "g1", "messages": [{"role": "user", "content": "Which is kinder?"}], "response_a": "Thanks!",
     "response_b": "Go away. " + HOSTILE, "human": "a", "judge": "b", "rationale": "B is more direct."},
    {"prompt_id": "g2", "messages": [{"role": "user", "content": "Shortest?"}], "response_a": "Hi",
     "response_b": "Hello", "human": "tie", "judge": "inconsistent", "rationale": None},
]


def _ledger(path: Path, calls) -> None:
    led = Ledger(path)
    for key, kind, i, o, usd, status in calls:
        led.record({"key": key, "status": status, "prompt_id": "p", "kind": kind, "verdict": "a",
                    "input_tokens": i, "output_tokens": o, "cost_usd": usd, "judge_model": "judge-m"})
    led.close()


def _cands(rows, model: str) -> pl.DataFrame:
    return pl.DataFrame([{"prompt_id": pid, "candidate_id": cid, "round": 0,
                          "messages": [{"role": "user", "content": f"Held-out question {pid}?"}], "response": text,
                          "num_tokens": len(text.split()), "finish_reason": "stop", "model": model, "adapter": None,
                          "seed": 0} for pid, cid, text in rows], schema=CANDIDATES_SCHEMA)


def build_run(run_dir: Path) -> Path:
    """Round 0 finished and evaluated (with checks), round 1 generated only, and a calibration."""
    r0, edir = run_dir / "round-0", run_dir / "round-0" / "eval"
    write_json(r0 / "candidates.manifest.json", {"counts": {"candidates": 8}, "tokens": {"completion": 400}})
    write_json(run_dir / "round-1" / "candidates.manifest.json", {"counts": {"candidates": 8},
                                                                  "tokens": {"completion": 350}})
    write_json(r0 / "pairs.card.json", {"kept": 3, "removed": {"tie": 1}})
    write_json(r0 / "judge-report.json", {"cost_usd": 0.003, "position_consistency": 0.9})
    pol = _cands([(p, f"{p}/pol", v[0]) for p, v in HELDOUT.items()], "policy")
    sft = _cands([(p, f"{p}/sft", v[1]) for p, v in HELDOUT.items()], "sft")
    write_parquet(edir / "answers" / "candidates" / "part-00000.parquet", pol, CANDIDATES_SCHEMA)
    write_json(edir / "answers" / "candidates.manifest.json", {"tokens": {"completion": 30}})
    write_parquet(run_dir / "eval-sft" / "candidates" / "part-00000.parquet", sft, CANDIDATES_SCHEMA)
    write_json(run_dir / "eval-sft" / "candidates.manifest.json", {"tokens": {"completion": 25}})
    y = {("policy", "policy"): 1.0, ("sft", "sft"): 0.0}
    write_parquet(edir / "outcomes.parquet", pl.DataFrame(
        [{"prompt_id": p, "policy_id": f"{p}/pol", "sft_id": f"{p}/sft", "policy_first": v[2], "sft_first": v[3],
          "y": y.get((v[2], v[3]), 0.5), "len_policy": len(v[0].split()), "len_sft": len(v[1].split())}
         for p, v in HELDOUT.items()]))
    write_parquet(edir / "checks.parquet", pl.DataFrame(
        {"prompt_id": list(HELDOUT), "numbered_list_policy": [v[4] for v in HELDOUT.values()],
         "numbered_list_sft": [v[5] for v in HELDOUT.values()]}))
    # evaluate's calls: two per judged prompt (both orders), in eval/judgments.parquet and the round's ledger
    ev = [(f"e-{p}-{o}", p, o) for p in ("h1", "h2", "h3", "h5") for o in ("ab", "ba")]
    write_parquet(edir / "judgments.parquet", pl.DataFrame(
        [{"key": k, "prompt_id": p, "kind": "pairwise", "a_id": f"{p}/pol", "b_id": f"{p}/sft", "order": o,
          "verdict": "a", "rationale": "The first answer bakes the cake." if (p, o) == ("h1", "ab") else None,
          "cost_usd": 0.0003} for k, p, o in ev], schema=JUDGMENTS_SCHEMA))
    _ledger(r0 / "judge-ledger.sqlite", JUDGE_CALLS + REVISE_CALLS + [(k, "pairwise", 80, 3, 0.0003, "done")
                                                                       for k, _, _ in ev])
    write_json(edir / "eval.json", {
        "round": 0, "win_rate": 0.75, "win_rate_ci": [0.55, 0.9], "lc_win_rate": None, "lc_reason": "too few",
        "policy_mean_tokens": 6.0, "sft_mean_tokens": 4.0, "n_prompts": 5, "n_identical": 1,
        "checks": {"numbered_list": {"check": "regex", "policy": 0.4, "sft": 0.2, "diff": 0.2,
                                     "diff_ci": [0.0, 0.6], "n": 5}}, "timing": {"wall_s": 12.0}})
    cal = run_dir / "calibration"
    _ledger(cal / "judge-ledger.sqlite", CAL_CALLS)
    write_json(cal / "calibration.json", {"n": 20, "agreement": 0.8, "cohen_kappa": 0.6, "judge_model": "judge-m",
                                          "judge_id": "abc123", "created_at": "2026-12-05"})
    (cal / "disagreements.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DISAGREE))
    return run_dir


def _files(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file() and p.suffix not in (".md", ".html", ".png")}


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    run_dir = build_run(tmp_path / "run")
    before = _files(run_dir)
    md = write_report(run_dir)
    assert _files(run_dir) == before  # ledgers opened read-only: nothing written beside them, nothing touched
    return run_dir, md


def test_html_is_self_contained_and_escaped(run):
    run_dir, md = run
    html = (run_dir / "report.html").read_text()
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert "<script" not in html.lower() and "onerror=\"" not in html
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs
    assert "http://" not in html and "https://" not in html and "url(" not in html
    # every plot report.md links is embedded, byte for byte
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md.read_text())
    assert "winrate.png" in linked
    for name in linked:
        assert base64.b64encode((run_dir / name).read_bytes()).decode() in html, name


def test_costs_each_source_apart(run):
    run_dir, _ = run
    c = {row["source"]: row for row in report_html.costs(run_dir)}
    assert (c["judge"]["calls"], c["judge"]["input_tokens"], c["judge"]["output_tokens"]) == (2, 220, 11)
    assert c["judge"]["usd"] == pytest.approx(0.003)
    assert (c["evaluate"]["calls"], c["evaluate"]["input_tokens"]) == (8, 640)
    assert c["evaluate"]["usd"] == pytest.approx(0.0024)
    assert (c["revise"]["calls"], c["revise"]["output_tokens"]) == (2, 120)
    assert c["revise"]["usd"] == pytest.approx(0.0012)
    assert (c["calibration"]["calls"], c["calibration"]["usd"]) == (3, pytest.approx(0.009))
    assert c["generate"]["output_tokens"] == 750 and c["generate"]["usd"] is None
    assert c["generate (evaluate answers)"]["output_tokens"] == 55
    assert "round-0/judge-ledger.sqlite" in c["judge"]["from"]
    assert "calibration/judge-ledger.sqlite" in c["calibration"]["from"]
    # A writer still at work: its latest commit sits in the -wal file, and the report reads it.
    led = Ledger(run_dir / "calibration" / "judge-ledger.sqlite")
    try:
        led.record({"key": "c-live", "status": "done", "kind": "pairwise", "input_tokens": 1, "output_tokens": 1,
                    "cost_usd": 0.001})
        assert (run_dir / "calibration" / "judge-ledger.sqlite-wal").stat().st_size > 0
        live = next(r for r in report_html.costs(run_dir) if r["source"] == "calibration")
        assert (live["calls"], live["usd"]) == (4, pytest.approx(0.01))
    finally:
        led.close()


def test_examples_chosen_by_checks_then_verdict(run):
    run_dir, _ = run
    html = (run_dir / "report.html").read_text()
    shown = re.findall(r'<section class="example" id="r0-([^"]+)"', html)
    # h3: the checks differ (policy passes, SFT fails); then the most decisive verdicts, a policy win
    # and an SFT win; the identical answers (h4) and the tie both ways (h5) are left out
    assert shown == ["h3", "h1", "h2"]
    assert "How these were chosen" in html
    # score mode: the largest score gaps, a policy win and an SFT win in turn; no gap, no example
    rows = [{"prompt_id": p, "y": y, "score_policy": sp, "score_sft": ss, "policy_first": None}
            for p, y, sp, ss in (("s1", 1.0, 6.0, 5.0), ("s2", 1.0, 9.0, 2.0), ("s3", 0.0, 1.0, 4.0),
                                 ("s4", 0.5, 3.0, 3.0))]
    assert [r["prompt_id"] for r in report_html.pick(rows, {})] == ["s2", "s3", "s1"]


def test_page_in_a_browser(run, browser, tmp_path):  # noqa: F811
    run_dir, md = run
    browser.get((run_dir / "report.html").as_uri())
    body = browser.find_element("tag name", "body").text
    assert md.read_text().splitlines()[0] in body  # the headline sentence
    assert "Round 0 policy beats SFT" in body
    ex = browser.find_elements("css selector", "section.example")
    assert [e.get_attribute("id") for e in ex] == ["r0-h3", "r0-h1", "r0-h2"]
    h1 = browser.find_element("id", "r0-h1").text
    assert "<script>document.title='pwned'</script>" in h1 and "It is 4" not in h1  # shown as text
    assert "1. Bake it." in h1 and "The first answer bakes the cake." in h1  # SFT's answer and the rationale
    assert browser.title != "pwned" and browser.execute_script("return document.scripts.length") == 0
    cal = browser.find_element("id", "calibration").text
    assert "80%" in cal and "Go away. <script>" in cal and "B is more direct." in cal and "inconsistent" in cal
    assert browser.find_element("id", "cost-judge").text.split()[:2] == ["judge", "2"]
    for img in browser.find_elements("tag name", "img"):  # the embedded plots render (CSP allows data:)
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
    # Fetches nothing: no resource timing entry and no subresource in the page's resource tree.
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
    tree = browser.execute_cdp_cmd("Page.getResourceTree", {})["frameTree"]
    assert [r["url"] for r in tree["resources"] if not r["url"].startswith("data:")] == []
    browser.set_window_size(1400, min(8000, browser.execute_script("return document.body.scrollHeight") + 40))
    browser.save_screenshot(str(tmp_path / "report-html.png"))
    shutil.copy(tmp_path / "report-html.png", "/work/report-html.png")
    # The instruments see a fetch when there is one: a page loading a file beside it and a URL on
    # 127.0.0.1's discard port (refused at once; nothing leaves the machine). Resource timing lists
    # network fetches only, the resource tree file:// ones too.
    (tmp_path / "leak.html").write_text('<img src="leak.png"><img src="http://127.0.0.1:9/leak.png">')
    browser.get((tmp_path / "leak.html").as_uri())
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == [
        "http://127.0.0.1:9/leak.png"]
    tree = browser.execute_cdp_cmd("Page.getResourceTree", {})["frameTree"]
    assert {r["url"].rsplit("/", 2)[-2:][1] for r in tree["resources"]} == {"leak.png"} and len(tree["resources"]) == 2


def test_half_done_run_still_writes_a_page(tmp_path):
    """A run with no eval and no calibration: the page says so, never crashes."""
    run_dir = tmp_path / "run"
    write_json(run_dir / "round-0" / "candidates.manifest.json", {"tokens": {"completion": 10}})
    write_parquet(run_dir / "round-0" / "eval" / "outcomes.parquet", pl.DataFrame({"prompt_id": ["x"]}))
    write_parquet(run_dir / "eval-sft" / "candidates" / "part-00000.parquet", _cands([("x", "x/s", "a")], "s"))
    write_parquet(run_dir / "round-0" / "eval" / "answers" / "candidates" / "part-00000.parquet",
                  _cands([("x", "x/p", "b")], "p"))
    write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    assert "No round evaluated yet" in html and 'id="calibration"' not in html
    assert "eval/outcomes.parquet lacks [&#x27;policy_id&#x27;" in html  # another shape: one line, no crash
