"""`rlaif calibrate`: the configured judge on human-labelled gold pairs, before a paid run.

    rlaif calibrate --config configs/api-judge-rubric.yaml gold=gold.jsonl

Judges every gold pair (rlaif/judge/trust/gold.py) with the judge exactly as configured (backend, rubric,
template, style) through JudgeSession, with RUN_DIR/calibration/judge-ledger.sqlite as its ledger,
so a rerun pays nothing. Pairwise mode: both orders; score, checklist and reward modes: each
response alone, the higher score wins (what the filter would keep). Writes
RUN_DIR/calibration/calibration.json, and the same under judge-ID-TEMPLATE.json, which is what
`judge.min_agreement` reads: `rlaif judge` refuses to start when this judge's latest calibration
is below it, or when there is none.

Also writes RUN_DIR/calibration/disagreements.jsonl (report.html and the review page show it): one
object per gold pair whose judge label differs from the human's, in gold order, with exactly the fields
prompt_id, messages, response_a, response_b, human (a|b|tie), judge (a|b|tie, or inconsistent|invalid:
no label, as in calibration.json's confusion) and rationale: the judge's explanation when judge.explain is
on, else null. Pairwise asks both orders; the rationale given is the first order's (response_a shown
first). Modes that judge each response alone give each one's, as "A: ...\nB: ..." (checklist items joined).

Definitions (also written into calibration.json):
- the judge's label of a pair is the filter's (rlaif/judge/pairs/filter.py `compare`): a or b when both
  orders name the same winner, tie when both say tie (or the texts are identical: never sent);
  an order-inconsistent or invalid outcome is no label.
- agreement: the share of gold pairs where the judge's label equals the human's; inconsistent and
  invalid outcomes count as disagreements (they stay in the denominator); a judge tie matches a
  human tie only.
- cohen_kappa: Cohen (1960), "A coefficient of agreement for nominal scales": (p_o - p_e) / (1 - p_e)
  over the classes a, b, tie; p_o is the agreement above, p_e = sum_k p_human(k) p_judge(k), where the
  judge's inconsistent/invalid share adds to neither (no human gives those labels).
- longer-wins rates (characters): of the pairs the judge (the humans) decided a or b between texts
  of different lengths, the share where the longer text won.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import polars as pl

from rlaif.errors import BudgetExceeded, JudgeIncomplete, UserError
from rlaif.io import JUDGMENTS_SCHEMA, stable_id, write_json, write_text
from rlaif.judge.pairs.compare import checklist_weights, compare
from rlaif.judge.trust.gold import HUMAN, read_gold
from rlaif.judge.trust.audit import position_stats
from rlaif.judge.session import JudgeSession, same_text

FILENAME = "calibration.json"
DISAGREEMENTS = "disagreements.jsonl"
DEFINITIONS = {
    "agreement": "share of gold pairs where the judge's both-order label (a, b or tie) equals the human's; "
                 "an order-inconsistent or invalid judge outcome counts as a disagreement",
    "cohen_kappa": "Cohen (1960) over a/b/tie: (p_o - p_e) / (1 - p_e), p_e from both raters' label shares",
    "longer_wins_rate": "of pairs decided a or b between texts of different length (characters), the share "
                        "where the longer won",
}


def label_kind(j) -> str:
    """The call kind whose verdicts decide a pair: what calibrates, and what min_agreement matches."""
    return ("reward" if j.backend == "reward_model" else "checklist" if j.mode == "checklist"
            else "pairwise" if j.mode == "pairwise" else "score")


def _version(spec, kind: str) -> str:
    return "reward" if kind == "reward" else spec.version(kind)


def judge_file(folder: Path, judge_id: str, template_version: str) -> Path:
    """Where the latest calibration of one judge (identity + template, rubric included) is kept."""
    return folder / f"judge-{judge_id}-{re.sub(r'[^A-Za-z0-9_.-]', '_', template_version)}.json"


def _ids(row: int) -> tuple[str, str, str]:
    return f"gold-{row}", f"gold-{row}-a", f"gold-{row}-b"


def plan(js: JudgeSession, gold: pl.DataFrame, kind: str) -> tuple[list, set[int]]:
    """The calls for every gold row (keyed by position, not prompt_id), and the rows never sent
    because both texts are the same (a tie, as the judge stage treats them)."""
    calls, identical, chats = [], set(), {}
    for r in gold.iter_rows(named=True):
        pid, a, b = _ids(r["row"])
        if same_text(r["response_a"], r["response_b"]):
            identical.add(r["row"])
        elif kind == "pairwise":
            calls += js.pairwise(pid, r["messages"], (a, r["response_a"]), (b, r["response_b"]))
        else:
            chats[pid] = r["messages"]
    if chats:
        items = js.checklists(chats) if kind == "checklist" else {}
        for r in gold.filter(pl.col("row").is_in(list(identical)).not_()).iter_rows(named=True):
            pid, a, b = _ids(r["row"])
            for cid, text in ((a, r["response_a"]), (b, r["response_b"])):
                calls += js.single(pid, r["messages"], (cid, text), items.get(pid))
    return calls, identical


def judge_labels(gold: pl.DataFrame, judgments: pl.DataFrame, identical: set[int], weights: dict) -> list[str]:
    """Per gold row: a, b, tie, inconsistent or invalid (no outcome at all is invalid)."""
    out = {}
    if judgments.height:
        for r in compare(judgments, weights).iter_rows(named=True):
            label = r["outcome"] if r["outcome"] != "label" else "a" if r["chosen_id"].endswith("-a") else "b"
            out[r["prompt_id"]] = label
    return ["tie" if row in identical else out.get(_ids(row)[0], "invalid") for row in gold["row"]]


def _rationale(judgments: pl.DataFrame, row: int, pairwise: bool) -> str | None:
    """The judge's explanation of one gold row: the first order's (ab) in pairwise mode, else each side's."""
    mine = judgments.filter((pl.col("prompt_id") == _ids(row)[0]) & pl.col("rationale").is_not_null()
                            & (pl.col("rationale") != ""))
    if pairwise:
        first = mine.filter(pl.col("order") == "ab")["rationale"].to_list()
        return first[0] if first else None
    parts = [f"{slot}: {text}" for slot, cid in (("A", _ids(row)[1]), ("B", _ids(row)[2]))
             for text in mine.filter(pl.col("a_id") == cid).sort("item", nulls_last=True)["rationale"].to_list()]
    return "\n".join(parts) or None


def disagreements(gold: pl.DataFrame, labels: list[str], judgments: pl.DataFrame, explain: bool,
                  pairwise: bool) -> list[dict]:
    """The gold rows where the judge's label is not the human's, with what a reader needs to see why."""
    return [{"prompt_id": r["prompt_id"], "messages": r["messages"], "response_a": r["response_a"],
             "response_b": r["response_b"], "human": r["human"], "judge": label,
             "rationale": _rationale(judgments, r["row"], pairwise) if explain else None}
            for r, label in zip(gold.iter_rows(named=True), labels) if label != r["human"]]


def cohen_kappa(human: list[str], judge: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is 1 (both used one label)."""
    n = len(human)
    if not n:
        return None
    p_o = sum(h == j for h, j in zip(human, judge)) / n
    p_e = sum(human.count(k) / n * judge.count(k) / n for k in set(human) | set(judge))
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def longer_wins(labels: list[str], gold: pl.DataFrame) -> float | None:
    la, lb = gold["response_a"].str.len_chars().to_list(), gold["response_b"].str.len_chars().to_list()
    won = [(lab == "a") == (a > b) for lab, a, b in zip(labels, la, lb) if lab in ("a", "b") and a != b]
    return sum(won) / len(won) if won else None


def _counts(labels: list[str], values) -> dict[str, int]:
    return {v: labels.count(v) for v in values}


def summarize(gold: pl.DataFrame, judge: list[str], calls: pl.DataFrame, js: JudgeSession) -> dict:
    human = gold["human"].to_list()
    unique = calls.unique("key", maintain_order=True)
    n_calls, cost = unique.height, float(unique["cost_usd"].sum() or 0.0)
    pw = calls.filter(pl.col("kind") == "pairwise")
    pos = position_stats(pw) if pw.height else {"position_consistency": None, "first_slot_win_rate": None}
    per_call = cost / n_calls if n_calls else None
    return {
        "n": gold.height, "agreement": sum(h == j for h, j in zip(human, judge)) / gold.height,
        "cohen_kappa": cohen_kappa(human, judge),
        "position_consistency": pos["position_consistency"], "first_slot_win_rate": pos["first_slot_win_rate"],
        "judge_longer_wins_rate": longer_wins(judge, gold), "human_longer_wins_rate": longer_wins(human, gold),
        "invalid_rate": float((unique["verdict"] == "invalid").mean()) if n_calls else None,
        "judge_labels": _counts(judge, (*HUMAN, "inconsistent", "invalid")), "human_labels": _counts(human, HUMAN),
        "confusion": {h: _counts([j for hh, j in zip(human, judge) if hh == h], (*HUMAN, "inconsistent", "invalid"))
                      for h in HUMAN},
        "calls": n_calls, "calls_made_this_run": js.runner.stats["calls_made"],
        "input_tokens": int(unique["input_tokens"].sum() or 0), "output_tokens": int(unique["output_tokens"].sum() or 0),
        "cost_usd": cost, "cost_per_1000_calls_usd": None if per_call is None else 1000 * per_call,
    }


def _priced(cfg, model: str) -> bool:
    return cfg.judge.backend != "openai" or model in cfg.judge.prices


def projected(cfg, js: JudgeSession, per_call: float | None) -> dict | None:
    """What judging a round's candidates would cost: the calls the judge stage would plan for them
    (rlaif/judge/stage.py judge_round) times the measured cost per call."""
    from rlaif.judge.candidates import split_inputs
    from rlaif.judge.candidates import read_candidates
    from rlaif.judge.pairs.rank import planned_calls

    c, j = cfg.calibrate, cfg.judge
    rdir = Path(c.run_dir or cfg.run_dir) / f"round-{cfg.round if c.round is None else c.round}"
    if not (rdir / "candidates.manifest.json").exists():
        return None
    accepted, _ = split_inputs(read_candidates(rdir), j)
    prompts = accepted["prompt_id"].n_unique()
    calls = planned_calls(cfg, accepted)
    pairwise = calls.get("pairwise", 0)
    basis = ("upper bound: best_vs_worst sends 2 calls per prompt unless its best and worst texts are identical"
             if pairwise and j.strategy == "best_vs_worst" else "calls the judge stage plans")
    if j.checklist_from_prompt:
        basis += "; generated checklist items not counted"
    return {"run_dir": str(rdir.parent), "round": int(rdir.name.split("-")[1]), "candidates": accepted.height,
            "prompts": prompts, "calls": sum(calls.values()), "basis": basis,
            "cost_usd": None if per_call is None else sum(calls.values()) * per_call}


def _send(js: JudgeSession, calls: list) -> pl.DataFrame:
    js.send(calls, "calibrate")
    judgments = js.results(calls)
    pending, r = js.pending(calls, judgments), js.runner
    if r.stopped:
        raise BudgetExceeded(f"calibrate stopped: {r.stopped}: ${r.cost:.4f} spent over {r.calls} paid calls in the "
                             f"ledger; {pending} calls pending. Rerun (with a higher cap) to continue")
    if pending:
        raise JudgeIncomplete(f"calibrate: {pending} calls got no reply after all retries (last error: "
                              f"{r.last_error}); rerun to retry only those")
    return judgments


def run(cfg) -> Path:
    t0, out = time.perf_counter(), Path(cfg.run_dir) / "calibration"
    gold = read_gold(cfg.calibrate)  # every bad row fails here, before the judge is loaded
    kind = label_kind(cfg.judge)
    with JudgeSession(cfg, out / "judge-ledger.sqlite") as js:
        calls, identical = plan(js, gold, kind)
        judgments = _send(js, calls) if calls else pl.DataFrame(schema=JUDGMENTS_SCHEMA)
        labels = judge_labels(gold, judgments, identical, checklist_weights(js.j))
        stats = summarize(gold, labels, judgments, js)
        per_call = stats["cost_usd"] / stats["calls"] if stats["calls"] else None
        version = _version(js.spec, kind)
        result = {"stage": "calibrate", **stats, "identical_pairs": len(identical),
                  "projected": projected(cfg, js, per_call), "priced": _priced(cfg, js.model),
                  "judge_model": js.model, "judge_id": js.judge_id, "identity": js.identity,
                  "rubric": js.spec.rubric_id, "template_version": version, "mode": cfg.judge.mode,
                  "label_kind": kind, "explain": cfg.judge.explain, "verdicts": cfg.judge.verdicts,
                  "gold": {"path": str(cfg.calibrate.gold), "rows": gold.height,
                           "id": stable_id(gold.drop("where").to_dicts())},
                  "definitions": DEFINITIONS, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "wall_s": round(time.perf_counter() - t0, 3)}
    rows = disagreements(gold, labels, judgments, cfg.judge.explain, kind == "pairwise")
    write_text(out / DISAGREEMENTS, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in rows))
    write_json(judge_file(out, js.judge_id, version), result)
    path = write_json(out / FILENAME, result)  # the latest of any judge: what report.md shows
    print_summary(result)
    return path


def _fmt(v, pct: bool = False) -> str:
    return "-" if v is None else f"{100 * v:.0f}%" if pct else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_summary(r: dict) -> None:
    p = r["projected"]
    rows = [("judge", f"{r['judge_model']} (id {r['judge_id']}, {r['template_version']})"),
            ("gold pairs", str(r["n"])), ("agreement", _fmt(r["agreement"])), ("Cohen's kappa", _fmt(r["cohen_kappa"])),
            ("position consistency", _fmt(r["position_consistency"])), ("invalid rate", _fmt(r["invalid_rate"])),
            ("longer wins judge / humans", f"{_fmt(r['judge_longer_wins_rate'], True)} / "
                                           f"{_fmt(r['human_longer_wins_rate'], True)}"),
            ("calls (this run)", f"{r['calls']} ({r['calls_made_this_run']})"), ("cost USD", f"{r['cost_usd']:.4f}"),
            ("projected", "-" if not p else f"{p['calls']} calls for round {p['round']} of {p['run_dir']}: "
                                            f"USD {_fmt(p['cost_usd'])}")]
    width = max(len(k) for k, _ in rows)
    print("calibration:")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def check_min_agreement(cfg) -> None:
    """`rlaif judge` with judge.min_agreement: start only if this judge's latest calibration meets it."""
    from rlaif.judge import templates as T
    from rlaif.judge.identity import judge_id, judge_identity
    from rlaif.judge.session import judge_weights

    j = cfg.judge
    if j.min_agreement is None:
        return
    # judge.model=policy: this round's judge (round=K calibrates round K's policy judge, as JudgeSession does)
    jid = judge_id(judge_identity(j, *judge_weights(cfg)))
    version = _version(T.build_spec(j), label_kind(j))
    path = judge_file(Path(cfg.run_dir) / "calibration", jid, version)
    try:
        cal = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"judge.min_agreement={j.min_agreement}: no calibration of this judge (judge_id {jid}, "
                        f"template {version}) at {path}; run `rlaif calibrate --config ... gold=PATH` first") from None
    if not isinstance(cal.get("agreement"), (int, float)) or cal["agreement"] < j.min_agreement:
        raise UserError(f"judge.min_agreement={j.min_agreement}: this judge agreed with the humans on "
                        f"{_fmt(cal.get('agreement'))} of {cal.get('n')} gold pairs (kappa "
                        f"{_fmt(cal.get('cohen_kappa'))}, {path}); refusing to judge")


def report_lines(run_dir: str | Path) -> list[str]:
    """report.md's calibration section; nothing when RUN_DIR/calibration/calibration.json is absent."""
    path = Path(run_dir) / "calibration" / FILENAME
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    p = r.get("projected") or {}
    cost = r.get("cost_per_1000_calls_usd")
    proj = f"{_fmt(p.get('cost_usd'))} ({p.get('calls')} calls, round {p.get('round')})" if p else "-"
    return ["", "## Judge calibration on human gold pairs", "",
            "| judge | rubric | gold pairs | agreement | Cohen's kappa | position consistency | longer wins judge / "
            "humans | invalid rate | USD per 1,000 calls | projected USD |", "|---|---|---|---|---|---|---|---|---|---|",
            f"| {r.get('judge_model')} ({r.get('judge_id')}) | {(r.get('rubric') or {}).get('first_line', '-')[:60]} "
            f"| {r.get('n')} | {_fmt(r.get('agreement'), True)} | {_fmt(r.get('cohen_kappa'))} "
            f"| {_fmt(r.get('position_consistency'))} | {_fmt(r.get('judge_longer_wins_rate'), True)} / "
            f"{_fmt(r.get('human_longer_wins_rate'), True)} | {_fmt(r.get('invalid_rate'))} "
            f"| {'-' if cost is None else f'{cost:.4f}'} | {proj} |", "",
            f"From `rlaif calibrate` ({path.name}, {r.get('created_at', '-')}). Agreement: {DEFINITIONS['agreement']}."]
