"""`rlaif calibrate`: the judge on human gold pairs (tests/assets/gold.jsonl, hand-written), agreement
and Cohen's kappa checked against hand computation, the ledger (a rerun pays nothing), mapped
columns of public preference sets, bad rows in one line, and judge.min_agreement gating `rlaif judge`.
Transport runs against the fake OpenAI server process; stage semantics also against tests/judges.py's
in-process judge, which implements the real backend contract."""
from __future__ import annotations

import json
from fractions import Fraction

import polars as pl
import pytest
import yaml

from conftest import ASSETS, rlaif_cli
from judges import ScriptedJudge, listy, write_candidates
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.judge.trust import calibrate
from rlaif.judge.trust.gold import read_gold
from servers import FakeJudgeServer

KEY, ENV = "sk-calibrate-test-5e4d3c2b1a", "RLAIF_CALIBRATE_KEY"
GOLD = ASSETS / "gold.jsonl"
HUMAN = ["a", "b", "b", "b", "a", "a", "tie", "a", "a", "a", "tie", "b"]  # gold.jsonl's human column
# The fake server's "longer" policy picks the longer text in both orders, a tie at equal length; the
# first three requests (row 1 in both orders, row 2's first order) get scripted replies instead:
# "A" twice (row 1: each order names its first slot: inconsistent) and "maybe" (row 2: invalid).
FAULTS = [{"type": "text", "content": "A"}, {"type": "text", "content": "A"}, {"type": "text", "content": "maybe"}]
LONGER = ["a", "b", "b", "b", "a", "tie", "tie", "b", "a", "b", "a", "b"]  # by len(), read off gold.jsonl
FAKE = ["inconsistent", "invalid"] + LONGER[2:]


def kappa_by_hand(human, judge) -> Fraction:
    """Cohen (1960): (p_o - p_e) / (1 - p_e), counted with exact fractions, independent of rlaif."""
    n = len(human)
    p_o = Fraction(sum(h == j for h, j in zip(human, judge)), n)
    p_e = sum(Fraction(human.count(k), n) * Fraction(judge.count(k), n) for k in ("a", "b", "tie"))
    return (p_o - p_e) / (1 - p_e)


def write_config(tmp_path, srv, *extra: str) -> str:
    cfg = {"run_dir": str(tmp_path / "run"), "prompts": str(ASSETS / "prompts.jsonl"), "model": "policy",
           "judge": {"backend": "openai", "base_url": srv.base_url, "model": "fake-judge", "api_key_env": ENV,
                     "api_style": "chat", "concurrency": 1, "timeout_s": 5, "min_consistency": 0,
                     "max_invalid_rate": 1, "prices": {"fake-judge": [1.0, 2.0]}}}
    path = tmp_path / "judge.yaml"
    path.write_text(f"# rlaif calibrate --config {path.name}\n" + yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def api():
    with FakeJudgeServer(api_key=KEY, policy="longer") as s:
        yield s


def local_cfg(tmp_path, model, *extra):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "prompts=tests/assets/prompts.jsonl", "model=policy",
                              "judge.backend=local", f"judge.model={model}", f"calibrate.gold={GOLD}", *extra])


def result(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "calibration" / "calibration.json").read_text())


DISAGREEMENT_FIELDS = ["prompt_id", "messages", "response_a", "response_b", "human", "judge", "rationale"]


def disagreements(tmp_path) -> list[dict]:
    text = (tmp_path / "run" / "calibration" / "disagreements.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def gold_rows() -> list[dict]:
    return [json.loads(line) for line in GOLD.read_text().splitlines()]


# ------------------------------------------------------------------ Cohen's kappa

def test_kappa_matches_textbook_examples():
    # Wikipedia, "Cohen's kappa", worked example: 50 grant proposals, both yes 20, both no 15,
    # A yes / B no 5, A no / B yes 10: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    a = ["a"] * 20 + ["a"] * 5 + ["b"] * 10 + ["b"] * 15
    b = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15
    assert calibrate.cohen_kappa(a, b) == pytest.approx(0.4)
    # Three classes, 200 items with shares (rows: rater 1, columns: rater 2) .44 .07 .09 / .05 .20 .05 /
    # .01 .03 .06: p_o = .70, p_e = .60*.50 + .30*.30 + .10*.20 = .41, kappa = .29 / .59.
    cells = {("a", "a"): 88, ("a", "b"): 14, ("a", "tie"): 18, ("b", "a"): 10, ("b", "b"): 40, ("b", "tie"): 10,
             ("tie", "a"): 2, ("tie", "b"): 6, ("tie", "tie"): 12}
    r1 = [h for (h, _), k in cells.items() for _ in range(k)]
    r2 = [j for (_, j), k in cells.items() for _ in range(k)]
    assert calibrate.cohen_kappa(r1, r2) == pytest.approx(0.29 / 0.59)
    assert calibrate.cohen_kappa(["a"] * 4, ["a"] * 4) is None  # chance agreement 1: undefined


# ------------------------------------------------------------------ the fake OpenAI server, through the CLI

def test_calibrate_against_the_server_then_a_rerun_pays_nothing(api, tmp_path):
    api.control(faults=FAULTS)
    config = write_config(tmp_path, api)
    env = {ENV: KEY}
    res = rlaif_cli("calibrate", "--config", config, f"gold={GOLD}", env=env)
    assert res.returncode == 0, res.stderr
    assert api.stats()["requests"] == 24  # 12 pairs x 2 orders
    r = result(tmp_path)
    assert r["n"] == 12 and r["calls"] == 24
    assert r["agreement"] == pytest.approx(float(Fraction(sum(h == j for h, j in zip(HUMAN, FAKE)), 12))) == 0.5
    assert r["cohen_kappa"] == pytest.approx(float(kappa_by_hand(HUMAN, FAKE))) == pytest.approx(5 / 17)
    assert r["judge_labels"] == {"a": 3, "b": 5, "tie": 2, "inconsistent": 1, "invalid": 1}
    assert r["confusion"]["a"] == {"a": 2, "b": 2, "tie": 1, "inconsistent": 1, "invalid": 0}
    assert r["position_consistency"] == pytest.approx(10 / 11)  # row 2 has an invalid order: not counted
    assert r["invalid_rate"] == pytest.approx(1 / 24)
    # longer wins: the judge every time it decided unequal lengths; the humans in 7 of 9 such pairs
    assert r["judge_longer_wins_rate"] == 1.0 and r["human_longer_wins_rate"] == pytest.approx(7 / 9)
    assert r["cost_usd"] > 0 and r["cost_per_1000_calls_usd"] == pytest.approx(1000 * r["cost_usd"] / 24)
    assert r["judge_model"] == "fake-judge" and r["identity"]["endpoint"] == api.base_url
    assert r["rubric"]["source"] == "default" and r["template_version"].startswith("pairwise-")
    assert KEY not in res.stdout + res.stderr + json.dumps(r)
    # disagreements.jsonl: exactly the gold rows where the judge's label is not the human's, in gold order
    gold, listed = gold_rows(), disagreements(tmp_path)
    want = [i for i, (h, j) in enumerate(zip(HUMAN, FAKE)) if h != j]
    assert len(listed) == len(want) == sum(v for h, row in r["confusion"].items() for j, v in row.items() if j != h)
    for d, i in zip(listed, want):
        assert list(d) == DISAGREEMENT_FIELDS
        assert [d[f] for f in ("prompt_id", "response_a", "response_b")] == [gold[i][f] for f in
                                                                             ("prompt_id", "response_a", "response_b")]
        assert d["messages"] == (gold[i].get("messages") or [{"role": "user", "content": gold[i]["prompt"]}])
        assert (d["human"], d["judge"], d["rationale"]) == (HUMAN[i], FAKE[i], None)  # judge.explain is off
    before = (tmp_path / "run" / "calibration" / "disagreements.jsonl").read_bytes()
    # rerun: every verdict comes from RUN_DIR/calibration/judge-ledger.sqlite
    again = rlaif_cli("calibrate", "--config", config, f"gold={GOLD}", env=env)
    assert again.returncode == 0, again.stderr
    assert api.stats()["requests"] == 24
    r2 = result(tmp_path)
    assert r2["calls_made_this_run"] == 0 and r2["agreement"] == r["agreement"]
    assert r2["cost_usd"] == pytest.approx(r["cost_usd"])
    assert (tmp_path / "run" / "calibration" / "disagreements.jsonl").read_bytes() == before
    # report.md shows it
    assert rlaif_cli("report", str(tmp_path / "run")).returncode == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Judge calibration on human gold pairs" in report and "| 12 | 50% | 0.294 |" in report


def first_order_why(label: str) -> str:
    """The fake server's explained rationale (tests/judge_replies.py `rationale`) in order ab, where slot A
    is response_a: it names the winning slot, so the second order (ba) would name the other letter."""
    if label == "tie":
        return "Both answer the question equally well."
    win = label.upper()
    return f"{'B' if win == 'A' else 'A'} is shorter, but {win} answers the question."


def test_explained_disagreements_carry_the_first_orders_rationale(api, tmp_path):
    # g1 (human: a): both orders scripted to prefer response_b, each order with its own rationale
    api.control(faults=[{"type": "text", "content": "First order: the second answer is complete.\nVerdict: B"},
                        {"type": "text", "content": "Second order: the first answer is complete.\nVerdict: A"}])
    res = rlaif_cli("calibrate", "--config", write_config(tmp_path, api), f"gold={GOLD}", "judge.explain=true",
                    env={ENV: KEY})
    assert res.returncode == 0, res.stderr
    judge, gold = ["b"] + LONGER[1:], gold_rows()
    want = [i for i, (h, j) in enumerate(zip(HUMAN, judge)) if h != j]
    listed = disagreements(tmp_path)
    assert [(d["prompt_id"], d["human"], d["judge"]) for d in listed] == [(gold[i]["prompt_id"], HUMAN[i], judge[i])
                                                                          for i in want]
    assert listed[0]["rationale"] == "First order: the second answer is complete."
    assert [d["rationale"] for d in listed[1:]] == [first_order_why(judge[i]) for i in want[1:]]


def test_min_agreement_refuses_rlaif_judge(api, tmp_path):
    write_candidates(tmp_path / "run", {f"p{p}": [listy(0), listy(2), listy(5)] for p in range(3)})
    api.control(faults=FAULTS)
    config, env = write_config(tmp_path, api), {ENV: KEY}
    # no calibration of this judge yet: refused, before any call
    res = rlaif_cli("judge", "--config", config, "judge.min_agreement=0.4", env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no calibration of this judge" in res.stderr and api.stats()["requests"] == 0
    assert rlaif_cli("calibrate", "--config", config, f"gold={GOLD}", env=env).returncode == 0
    r = result(tmp_path)
    assert r["agreement"] == 0.5
    # projected: best_vs_worst plans 9 score calls + 2 pairwise per prompt for these candidates
    assert r["projected"]["calls"] == 15 and r["projected"]["cost_usd"] == pytest.approx(15 * r["cost_usd"] / 24)
    n = api.stats()["requests"]
    res = rlaif_cli("judge", "--config", config, "judge.min_agreement=0.6", env=env)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "judge.min_agreement=0.6" in line and "0.500 of 12 gold pairs" in line
    assert api.stats()["requests"] == n and not (tmp_path / "run" / "round-0" / "judgments.parquet").exists()
    # another rubric is another judge: its calibration does not carry over
    res = rlaif_cli("judge", "--config", config, "judge.min_agreement=0.4", "judge.rubric=Prefer short answers.",
                    env=env)
    assert res.returncode == 2 and "no calibration of this judge" in res.stderr
    # at or above the bar, the judge runs; the projection matched the calls it made
    res = rlaif_cli("judge", "--config", config, "judge.min_agreement=0.5", env=env)
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "run" / "round-0" / "judge-report.json").read_text())
    assert rep["calls"] == r["projected"]["calls"]


# ------------------------------------------------------------------ the in-process judge

def test_scripted_judge_pairwise_and_score_modes(scripted, tmp_path):
    calibrate.run(local_cfg(tmp_path, scripted))
    assert len(ScriptedJudge.calls) == 24
    # no numbered lists in gold.jsonl: the scripted judge prefers the longer text, in both orders
    r = result(tmp_path)
    assert r["agreement"] == pytest.approx(8 / 12)
    assert r["cohen_kappa"] == pytest.approx(float(kappa_by_hand(HUMAN, LONGER))) == pytest.approx(11 / 23)
    assert r["position_consistency"] == 1.0 and r["invalid_rate"] == 0.0 and r["cost_usd"] == 0.0
    calibrate.run(local_cfg(tmp_path, scripted))
    assert len(ScriptedJudge.calls) == 24  # the ledger answered the rerun
    # score mode (the quickstart's): each response scored alone (1 + 2 x numbered lines), higher wins
    gold = tmp_path / "listy.jsonl"
    rows = [(listy(3), listy(0), "a"), (listy(1), listy(4), "a"), (listy(2), listy(2, words=3), "tie")]
    gold.write_text("".join(json.dumps({"prompt": "How do I reset it?", "response_a": a, "response_b": b,
                                        "human": h}) + "\n" for a, b, h in rows))
    calibrate.run(local_cfg(tmp_path, scripted, "judge.mode=score", f"calibrate.gold={gold}"))
    r = result(tmp_path)
    assert r["label_kind"] == "score" and r["calls"] == 6 and r["position_consistency"] is None
    assert r["judge_labels"]["a"] == 1 and r["judge_labels"]["b"] == 1 and r["judge_labels"]["tie"] == 1
    assert r["agreement"] == pytest.approx(2 / 3)
    # explained scores: the one disagreement (row 2: 1 vs 4 list items, humans said a) with each side's reason
    calibrate.run(local_cfg(tmp_path, scripted, "judge.mode=score", f"calibrate.gold={gold}", "judge.explain=true"))
    (d,) = disagreements(tmp_path)
    assert (d["response_a"], d["human"], d["judge"]) == (listy(1), "a", "b")
    assert d["rationale"] == "A: It has 1 list items.\nB: It has 4 list items."


def test_identical_responses_are_a_tie_without_a_call(scripted, tmp_path):
    gold = tmp_path / "same.jsonl"
    gold.write_text(json.dumps({"prompt": "Hi", "response_a": "Hello there", "response_b": " Hello  there",
                                "human": "tie"}) + "\n")
    calibrate.run(local_cfg(tmp_path, scripted, f"calibrate.gold={gold}"))
    r = result(tmp_path)
    assert ScriptedJudge.calls == [] and r["agreement"] == 1.0 and r["identical_pairs"] == 1


# ------------------------------------------------------------------ gold files: mapped columns, bad rows

def _cal(**kw):
    return load_config(None, ["prompts=tests/assets/prompts.jsonl"]).calibrate.model_copy(update=kw)


def test_public_preference_sets_load_through_mapped_columns(tmp_path):
    # Chatbot Arena / MT-Bench human judgments: full conversations and a winner column (parquet)
    conv = lambda reply: [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": reply}]  # noqa: E731
    pl.DataFrame({"question_id": [1, 2, 3], "conversation_a": [conv("Apple."), conv("Pear."), conv("Fig.")],
                  "conversation_b": [conv("Plum."), conv("Kiwi."), conv("Lime.")],
                  "winner": ["model_a", "tie (bothbad)", "model_b"]}).write_parquet(tmp_path / "arena.parquet")
    g = read_gold(_cal(gold=str(tmp_path / "arena.parquet"), columns={
        "response_a": "conversation_a", "response_b": "conversation_b", "human": "winner", "prompt_id": "question_id"},
        human_values={"model_a": "a", "model_b": "b", "tie (bothbad)": "tie"}))
    assert g["human"].to_list() == ["a", "tie", "b"] and g["response_b"].to_list() == ["Plum.", "Kiwi.", "Lime."]
    assert g["messages"][0].to_list() == [{"role": "user", "content": "Name a fruit."}] and g["prompt_id"][0] == "1"
    # Stanford Human Preferences: history, human_ref_A/B, integer labels (CSV)
    pl.DataFrame({"history": ["Best pizza topping?"] * 2, "human_ref_A": ["Basil.", "Ham."],
                  "human_ref_B": ["Pineapple.", "Olives."], "labels": [1, 0]}).write_csv(tmp_path / "shp.csv")
    cal = load_config(None, ["prompts=x", f"calibrate.gold={tmp_path / 'shp.csv'}", "calibrate.human_values={1: a, 0: b}",
                             "calibrate.columns={prompt: history, response_a: human_ref_A, response_b: human_ref_B, "
                             "human: labels}"]).calibrate
    assert read_gold(cal)["human"].to_list() == ["a", "b"]
    # UltraFeedback binarized: chosen/rejected chat lists, no label; its messages end with the chosen reply
    import datasets

    rows = [{"prompt": f"Question {i}?", "chosen": conv(f"Good answer {i}."), "rejected": conv(f"Bad {i}."),
             "messages": conv(f"Good answer {i}.")} for i in range(8)]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "uf"))
    g = read_gold(_cal(gold=str(tmp_path / "uf"), split="train_prefs", a_is_preferred=True,
                       columns={"response_a": "chosen", "response_b": "rejected", "messages": None}))
    good = [r["response_a"] if r["human"] == "a" else r["response_b"] for r in g.iter_rows(named=True)]
    assert all(t.startswith("Good") for t in good) and 0 < g["human"].to_list().count("a") < 8
    assert g["messages"][0].to_list() == [{"role": "user", "content": "Question 0?"}]
    # the review page's export repeats prompt_ids: rows are keyed by position
    assert read_gold(_cal(gold=str(GOLD)))["prompt_id"].to_list().count("g3") == 3


@pytest.mark.parametrize("row,needle", [
    ({"prompt": "Q", "response_a": "x", "response_b": "y", "human": "maybe"},
     r"line 2: field human: 'maybe' is not a, b or tie"),
    ({"prompt": "Q", "response_a": "x", "human": "a"}, r"line 2: no field response_b"),
    ({"prompt": "Q", "response_a": "", "response_b": "y", "human": "a"}, r"line 2: field response_a: expected a non-empty"),
    ({"messages": [{"role": "robot", "content": "hi"}], "response_a": "x", "response_b": "y", "human": "a"},
     r"line 2: field messages\[0\]\.role: 'robot'"),
    ({"response_a": "x", "response_b": "y", "human": "a"}, r"line 2: no messages or prompt field"),
    ({"prompt": "Q", "response_a": [{"role": "user", "content": "x"}], "response_b": "y", "human": "a"},
     r"line 2: field response_a: a chat list must end with the assistant's reply"),
])
def test_bad_gold_row_is_one_line(tmp_path, row, needle):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "Q", "response_a": "x", "response_b": "y", "human": "a"}) + "\n"
                    + json.dumps(row) + "\n")
    with pytest.raises(UserError, match=needle) as e:
        read_gold(_cal(gold=str(gold)))
    assert str(gold) in str(e.value) and "\n" not in str(e.value)


def test_bad_gold_through_the_cli_exits_2_before_any_call(api, tmp_path):
    gold = tmp_path / "gold.csv"
    pl.DataFrame({"prompt": ["Q1", "Q2"], "chosen": ["x", "y"], "rejected": ["z", "w"],
                  "winner": ["a", "nobody"]}).write_csv(gold)
    res = rlaif_cli("calibrate", "--config", write_config(tmp_path, api), f"gold={gold}",
                    "calibrate.columns={response_a: chosen, response_b: rejected, human: winner}", env={ENV: KEY})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{gold}: row 2: field winner (human): 'nobody' is not a, b or tie" in res.stderr
    assert api.stats()["requests"] == 0 and not (tmp_path / "run" / "calibration" / "judge-ledger.sqlite").exists()
    res = rlaif_cli("calibrate", "--config", write_config(tmp_path, api), env={ENV: KEY})
    assert res.returncode == 2 and "give gold=PATH" in res.stderr


def test_calibrate_help_ends_with_examples_and_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys; from rlaif.cli import main\ntry:\n    main(['calibrate', '--help'])\nexcept SystemExit:\n"
            "    pass\nimport rlaif.judge.trust.calibrate\n"
            "print(sorted(m for m in ['torch', 'transformers', 'trl', 'peft', 'datasets'] if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "rlaif calibrate --config" in out[out.rindex("examples:"):] and out.strip().splitlines()[-1] == "[]"


def test_gold_dataset_dict_without_the_split_names_calibrate_split(tmp_path):
    import datasets

    row = {"prompt": "Q", "response_a": "x", "response_b": "y", "human": "a"}
    datasets.DatasetDict({"test": datasets.Dataset.from_list([row])}).save_to_disk(str(tmp_path / "g"))
    with pytest.raises(UserError, match=r"no split 'train' \(has test\); set calibrate.split"):
        read_gold(_cal(gold=str(tmp_path / "g")))
    assert read_gold(_cal(gold=str(tmp_path / "g"), split="test"))["human"].to_list() == ["a"]


def test_a_review_page_export_loads_as_gold(tmp_path):
    from rlaif.review.labels import LabelStore, export_gold

    store = LabelStore(tmp_path / "human-labels.sqlite")
    for i, h in enumerate(["a", "tie"]):  # two comparisons of one prompt: its prompt_id repeats in the export
        store.put({"item_id": f"x{i}", "round": 0, "prompt_id": "p0", "a_id": f"c{i}", "b_id": f"c{i + 5}",
                   "messages": [{"role": "user", "content": "Q?"}], "response_a": f"answer {i}",
                   "response_b": f"other {i}", "shown_first": f"c{i}"}, h)
    export_gold(tmp_path, tmp_path / "gold.jsonl")
    g = read_gold(_cal(gold=str(tmp_path / "gold.jsonl")))
    assert g["prompt_id"].to_list() == ["p0", "p0"] and g["human"].to_list() == ["a", "tie"]
