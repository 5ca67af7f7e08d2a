"""`rlaif review`: a real server process over a hand-written run folder, driven by a real headless
Chromium (Debian's /usr/bin/chromium + /usr/bin/chromedriver through selenium 4; `make test` installs
them with scripts/install-browser.sh), plus the JSON endpoints and the gold export."""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, rlaif_cli
from review_run import CHECKLIST, ROUND0, build_checklist_run, build_run
from rlaif.review import data as review_data
from rlaif.review.labels import GOLD_COLUMNS, LabelStore, run_agreement

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@contextmanager
def review_server(run_dir: Path, *args: str):
    """`rlaif review RUN_DIR --port 0` as a process; yields (its URL, the process) once /api/health answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "review", str(run_dir), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        url, seen, deadline = None, [], time.monotonic() + 60
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                seen.append(line)
                url = next((w for w in line.split() if w.startswith("http://127.0.0.1:")), None)
        assert url, f"rlaif review did not start: {''.join(seen)}"
        assert json.loads(urllib.request.urlopen(url + "api/health", timeout=10).read()) == {"ok": True}
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str, path: str) -> dict:
    return json.loads(urllib.request.urlopen(url + path, timeout=30).read())


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "api/label", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return build_run(tmp_path / "run")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and DRIVER.exists()):
        msg = "no /usr/bin/chromium + /usr/bin/chromedriver: run scripts/install-browser.sh (make test does)"
        if os.environ.get("RLAIF_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)  # a driver path: no Selenium Manager
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, check, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d))
    except Exception:
        shots = os.environ.get("RLAIF_REVIEW_SCREENSHOTS")
        if shots:
            driver.save_screenshot(str(Path(shots) / "failure.png"))
        raise AssertionError(f"page: {what} (body: {driver.find_element('tag name', 'body').text[:800]!r})") from None


def text(driver, id_: str) -> str:
    return driver.find_element("id", id_).text


def screenshot(driver, name: str) -> None:
    """RLAIF_REVIEW_SCREENSHOTS=DIR keeps PNGs of the page for a person to look at."""
    if os.environ.get("RLAIF_REVIEW_SCREENSHOTS"):
        Path(os.environ["RLAIF_REVIEW_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(os.environ["RLAIF_REVIEW_SCREENSHOTS"]) / name))


# ---------------------------------------------------------------- the page in a browser

def test_page_browse_label_reload(run_dir, browser):
    from selenium.webdriver.support.ui import Select

    with review_server(run_dir) as (url, _):
        browser.get(url)
        # Browse: round 0's kept pairs, side by side, with both verdicts and the judge's rationale
        pair = wait_for(browser, lambda d: next((p for p in d.find_elements("css selector", ".pair")
                                                 if "Paris is the capital of France." in p.text), None),
                        "the kept pair p1")
        assert "It might be Lyon." in pair.text and "kept" in pair.text
        assert "judge, chosen shown first: chosen" in pair.text and "p1 ab: the first answer is right" in pair.text
        assert "margin 1.00" in pair.text and "8 tokens" in pair.text
        screenshot(browser, "browse.png")
        # the comparisons the filter removed, with the filter's name
        Select(browser.find_element("id", "status")).select_by_value("length_ratio")
        wait_for(browser, lambda d: "removed: length_ratio" in text(d, "pairs") and "p6" in text(d, "pairs")
                 and "Paris" not in text(d, "pairs"), "the pair removed by length_ratio")

        # Label: a blind item, A/B/tie, a reload keeps the label and the changed agreement figure
        browser.find_element("id", "tab-label").click()
        wait_for(browser, lambda d: d.find_element("id", "slot-A").text, "a sample item")
        before = wait_for(browser, lambda d: text(d, "agreement") if "loading" not in text(d, "agreement") else None,
                          "the agreement figure")
        assert before == "Judge agreement: no labels yet"
        item = text(browser, "label-item")
        for leak in ("chosen", "rejected", "kept", "margin", "/c0", "/c1", "inconsistent"):
            assert leak not in item, f"the blind sample shows {leak!r}"
        shown_a = text(browser, "slot-A")
        assert text(browser, "current-label") == "none"
        browser.find_element("id", "choose-A").click()
        wait_for(browser, lambda d: text(d, "current-label") == "A" and text(d, "saved") == "saved", "the label saved")
        after = text(browser, "agreement")
        assert after != before and "of 1 labelled comparisons" in after
        screenshot(browser, "label.png")

        browser.refresh()
        wait_for(browser, lambda d: d.find_element("id", "slot-A").text == shown_a, "the same item after a reload")
        wait_for(browser, lambda d: text(d, "current-label") == "A", "the label after a reload")
        assert text(browser, "agreement") == after
        assert browser.find_element("id", "choose-A").get_attribute("class") == "picked"

    # what the page stored: one label, in candidate terms, naming the text shown in slot A
    (row,) = LabelStore(run_dir / "human-labels.sqlite").rows()
    assert (row["response_a"] if row["human"] == "a" else row["response_b"]) == shown_a
    share = run_agreement(run_dir)["agreement"]
    assert after.startswith(f"Judge agreement: {round(100 * share)}%")


def test_checklist_page_in_a_browser_shows_what_the_judge_decided(tmp_path, browser):
    """judge.mode=checklist and score make no pairwise call: the page shows each candidate's answers and
    P(yes) (or its score) and the filter's chosen answer, never both-order verdicts that were not asked."""
    from selenium.webdriver.support.ui import Select

    from selenium.common.exceptions import StaleElementReferenceException

    def pair_text(needle: str):
        def check(d):  # the text itself, read in one go: a re-render between finding and reading is a retry
            try:
                return next((t for t in (p.text for p in d.find_elements("css selector", ".pair")) if needle in t), None)
            except StaleElementReferenceException:
                return None
        return check

    run = build_checklist_run(tmp_path / "run")
    with review_server(run) as (url, _):
        browser.get(url)
        body = wait_for(browser, pair_text("prompt k1"), "the checklist pair k1")
        # the filter's chosen (weights 3:1): k1/c0, though an unweighted mean would pick k1/c1
        assert "chosen · k1/c0" in body and "rejected · k1/c1" in body, body
        assert "judged each candidate alone (checklist, weighted P(yes))" in body, body
        assert f"{CHECKLIST['0']['item']} (weight 3): yes, P(yes) 0.90" in body, body
        assert f"{CHECKLIST['1']['item']} (weight 1): yes, P(yes) 1.00" in body, body
        assert "weighted P(yes) 0.700" in body and "weighted P(yes) 0.475" in body, body
        for wrong in ("same winner in both orders", "not judged", "shown first"):
            assert wrong not in body, f"the checklist pair says {wrong!r}: {body}"
        screenshot(browser, "checklist.png")
        Select(browser.find_element("id", "round")).select_by_value("1")
        body = wait_for(browser, pair_text("prompt s1"), "the scored pair s1")
        assert "judged each candidate alone (score)" in body and "score 7.00" in body and "score 4.00" in body, body
        for wrong in ("same winner in both orders", "not judged", "shown first"):
            assert wrong not in body, f"the scored pair says {wrong!r}: {body}"


def test_checklist_round_data_follows_the_filters_weights(tmp_path):
    run = build_checklist_run(tmp_path / "run")
    df, meta = review_data.load_round(run, 0)
    pairs = pl.read_parquet(run / "round-0" / "pairs.parquet")
    assert pairs.filter(pl.col("prompt_id") == "k1")["chosen_id"].to_list() == ["k1/c0"]
    rows = {r["prompt_id"]: r for r in df.to_dicts()}
    for p in pairs.iter_rows(named=True):  # the page's chosen is the one pairs.parquet has, and it is kept
        r = rows[p["prompt_id"]]
        assert (r["left_id"], r["right_id"], r["status"]) == (p["chosen_id"], p["rejected_id"], "kept")
    assert meta["card_mismatch"] == [] and meta["weights"] == {"0": 3.0, "1": 1.0}
    k1 = rows["k1"]
    assert k1["judged_by"] == "checklist" and k1["left_first"] is None
    assert (k1["left_score"], k1["right_score"]) == (pytest.approx(0.7), pytest.approx(0.475))
    assert [(a["item"], a["verdict"], a["p_yes"], a["weight"]) for a in k1["left_checklist"]] == [
        (CHECKLIST["0"]["item"], "yes", 0.9, 3.0), (CHECKLIST["1"]["item"], "no", 0.1, 1.0)]
    s1 = review_data.load_round(run, 1)[0].to_dicts()[0]
    assert (s1["judged_by"], s1["left_id"], s1["left_score"], s1["right_score"]) == ("score", "s1/c0", 7.0, 4.0)


def calibrate_into(run_dir: Path, scripted: Path, tmp_path: Path) -> list[dict]:
    """`rlaif calibrate` (in-process, the scripted judge explaining itself) on two gold pairs: the judge prefers
    the numbered list, the humans did not in the first pair (text with markup, which the page must show as
    text); returns what it wrote to RUN_DIR/calibration/disagreements.jsonl."""
    from rlaif.config import load_config
    from rlaif.judge.trust import calibrate

    gold = tmp_path / "gold.jsonl"
    rows = [("Is <b>this</b> bold?", "Short & <b>bold</b>", "1. One\n2. Two <img src=x onerror=alert(1)>", "a"),
            ("List two fruits.", "1. Apple\n2. Pear", "Apples.", "a")]
    gold.write_text("".join(json.dumps({"prompt_id": f"g{i}", "prompt": q, "response_a": a, "response_b": b,
                                        "human": h}) + "\n" for i, (q, a, b, h) in enumerate(rows)))
    calibrate.run(load_config(None, [f"run_dir={run_dir}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                                     "judge.backend=local", f"judge.model={scripted}", "judge.explain=true",
                                     f"calibrate.gold={gold}"]))
    path = run_dir / "calibration" / "disagreements.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_calibration_disagreements_on_the_page(run_dir, scripted, tmp_path, browser):
    with review_server(run_dir) as (url, _):  # no calibration yet: no tab, and the endpoint says so
        assert get(url, "api/calibration") == {"exists": False, "rows": [], "summary": None}
        browser.get(url)
        wait_for(browser, lambda d: d.find_elements("css selector", ".pair"), "the browse tab")
        assert not browser.find_element("id", "tab-calibration").is_displayed()
    listed = calibrate_into(run_dir, scripted, tmp_path)
    assert [(d["prompt_id"], d["human"], d["judge"]) for d in listed] == [("g0", "a", "b")]
    with review_server(run_dir) as (url, _):
        cal = get(url, "api/calibration")
        assert cal["exists"] and cal["rows"] == listed and cal["summary"]["agreement"] == 0.5
        browser.get(url)
        tab = wait_for(browser, lambda d: d.find_element("id", "tab-calibration") if
                       d.find_element("id", "tab-calibration").is_displayed() else None, "the calibration tab")
        tab.click()
        card = wait_for(browser, lambda d: next((c.text for c in d.find_elements("css selector", "#disagreements .pair")),
                                                None), "a disagreement")
        for shown in ("Is <b>this</b> bold?", "Short & <b>bold</b>", "2. Two <img src=x onerror=alert(1)>",
                      "humans: a", "judge: b", "Response A opens well; A is shorter."):
            assert shown in card, f"{shown!r} not in {card!r}"
        assert "1 of 2 gold pairs" in text(browser, "calibration-summary")
        # markup in model or gold text stays text: no element was made from it
        assert browser.find_elements("css selector", "#calibration b, #calibration img") == []
        screenshot(browser, "calibration.png")


# ---------------------------------------------------------------- the endpoints and the export

def test_sample_is_blind_and_choices_map_to_candidates(run_dir):
    with review_server(run_dir, "--sample", "5", "--seed", "3") as (url, _):
        items = get(url, "api/sample")["items"]
        assert len(items) == 5
        assert all(set(it) == {"item_id", "round", "messages", "A", "B", "label"} for it in items)
        assert get(url, "api/sample")["items"] == items  # seeded: the same sample and slot order
        for it, choice in zip(items, ("A", "B", "tie", "A", "B")):
            code, res = post(url, {"item_id": it["item_id"], "choice": choice})
            assert code == 200 and res["label"] == choice
        labels = {it["item_id"]: it["label"] for it in get(url, "api/sample")["items"]}
        assert labels == dict(zip([it["item_id"] for it in items], ("A", "B", "tie", "A", "B")))
        assert post(url, {"item_id": "nope", "choice": "A"})[0] == 400
        assert post(url, {"item_id": items[0]["item_id"], "choice": "left"})[0] == 400
    rows = {r["item_id"]: r for r in LabelStore(run_dir / "human-labels.sqlite").rows()}
    for it, choice in zip(items, ("A", "B", "tie", "A", "B")):  # the stored winner: the text seen in that slot
        r = rows[it["item_id"]]
        win = {"a": r["response_a"], "b": r["response_b"]}.get(r["human"])
        assert win == {"A": it["A"], "B": it["B"]}.get(choice)
    # another seed draws another order (8 labellable comparisons here: p7's identical pair is left out)
    pool = review_data.sample(run_dir, 100, 0)
    assert len(pool) == 8 and "p7" not in {s["prompt_id"] for s in pool}
    assert [s["item_id"] for s in pool] != [s["item_id"] for s in review_data.sample(run_dir, 100, 1)]


def test_round_endpoint_sorts_and_filters(run_dir):
    with review_server(run_dir) as (url, _):
        r = get(url, "api/round?k=0&status=length_ratio")
        assert r["total"] == 1 and r["rows"][0]["prompt_id"] == "p6" and r["rows"][0]["status"] == "length_ratio"
        assert r["meta"]["card_mismatch"] == []  # the page's per-filter counts equal the filter's card
        card = json.loads((run_dir / "round-0" / "pairs.card.json").read_text())
        assert r["meta"]["counts"] == {"kept": card["kept"], **{k: v for k, v in card["removed"].items() if v}}
        removed = get(url, "api/round?k=0&status=removed&sort=-len_diff")["rows"]
        assert [x["prompt_id"] for x in removed] == ["p6", "p3", "p7", "p4", "p5"]
        assert {x["status"] for x in removed} == {"length_ratio", "inconsistent", "identical", "tie", "truncated"}
        assert [x["prompt_id"] for x in get(url, "api/round?k=0&outcome=tie")["rows"]] == ["p4"]
        assert {x["prompt_id"] for x in get(url, "api/round?k=0&min_diff=1&max_diff=10")["rows"]} == {"p1", "p3"}
        p3 = get(url, "api/round?k=0&status=inconsistent")["rows"][0]
        assert (p3["left_first"], p3["right_first"]) == ("left", "right")  # each order picked what it saw first
        kept1 = get(url, "api/round?k=1&status=kept")["rows"]  # round 1's judgments have no rationale column
        assert [x["prompt_id"] for x in kept1] == ["q1"] and kept1[0]["left_first_why"] is None
        req = urllib.request.Request(url + "api/rounds", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(req, timeout=10)
        assert post(url, {"item_id": "x", "choice": "A"}, {"Origin": "http://evil.example"})[0] == 403
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(url + "api/round?k=0&sort=bogus", timeout=10)
        assert bad.value.code == 400 and "sort 'bogus'" in json.loads(bad.value.read())["error"]


def test_export_gold_loads_back(run_dir, tmp_path):
    with review_server(run_dir) as (url, _):
        items = get(url, "api/sample")["items"][:3]
        for it, choice in zip(items, ("A", "B", "tie")):
            assert post(url, {"item_id": it["item_id"], "choice": choice})[0] == 200
    gold = tmp_path / "gold.jsonl"
    res = rlaif_cli("review", str(run_dir), "--export", str(gold), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "3 label(s)" in res.stdout
    df = pl.read_ndjson(gold)
    assert tuple(df.columns) == GOLD_COLUMNS and len(df) == 3
    assert "tie" in set(df["human"]) and set(df["human"]) <= {"a", "b", "tie"}
    texts = {t for _, _, *sides in ROUND0.values() for t, _, _ in sides}
    for row in df.iter_rows(named=True):
        assert row["messages"][0]["role"] == "user" and row["messages"][0]["content"].startswith("Question ")
        assert {row["response_a"], row["response_b"]} <= texts
    empty = build_run(tmp_path / "empty")
    res = rlaif_cli("review", str(empty), "--export", str(tmp_path / "none.jsonl"), timeout=120)
    assert res.returncode != 0 and "no labels yet" in res.stderr


def test_kill_9_server_keeps_saved_labels(run_dir):
    with review_server(run_dir) as (url, proc):
        items = get(url, "api/sample")["items"]
        for it in items[:4]:
            assert post(url, {"item_id": it["item_id"], "choice": "B"})[0] == 200
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with review_server(run_dir) as (url, _):
        after = get(url, "api/sample")
        assert [it["label"] for it in after["items"][:5]] == ["B", "B", "B", "B", None]
        assert after["agreement"]["n"] == 4


def test_cli_errors_are_one_line(tmp_path):
    res = rlaif_cli("review", str(tmp_path / "missing"), "--port", "0", timeout=120)
    assert res.returncode != 0 and "no such run folder" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = rlaif_cli("review", "--help", timeout=120)
    assert res.returncode == 0 and "examples:" in res.stdout and "--export" in res.stdout


def test_page_has_no_outside_assets():
    page = (ROOT / "rlaif" / "review" / "page.html").read_text()
    for bad in ("http://", "https://", "src=", ".innerHTML"):  # offline machines; model text is untrusted
        assert bad not in page, bad
