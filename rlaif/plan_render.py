"""`rlaif plan`'s table for people: per round, calibrate, the total, the budget and memory (rlaif/plan.py
builds the figures; `--json` prints them as they are)."""
from __future__ import annotations


def _usd(v) -> str:
    return "unknown" if v is None else f"${v:,.2f}"


def _hms(s) -> str:
    if s is None:
        return "unknown"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _calls(sec: str, calls: dict) -> list[str]:
    return [f"  {sec} {kind}: {v['calls']:,} calls x ~{v['input_tokens']:,.0f} in + {v['output_tokens']:,.0f} out "
            f"tokens ({v['output_basis']})" for kind, v in calls.items()]


def _cost_time(co: dict, t: dict) -> str:
    line = (f"  cost: live {_usd(co['live_usd'])}, Batch API {_usd(co['batch_usd'])}"
            + (f" ({co['note']})" if co.get("note") else "")
            + f"; time live {'~' if t['seconds'] else ''}{_hms(t['seconds'])}")
    line += f" ({t['basis']})" if t.get("basis") else ""
    if t.get("batch_phases"):
        line += f"; Batch API: {t['batch_phases']} phase(s) one after another, each within {t['batch_window']}"
    return line


def render(p: dict) -> list[str]:
    c = p["config"]
    out = [f"rlaif plan: {c['rounds']} round(s), judge {c['judge']} ({c['mode_api']}); input tokens counted with "
           f"{p['tokenizer']}", ""]
    for r in p["rounds"]:
        g = r["generate"]
        out.append(f"round {r['round']} ({r['candidates_basis']}):")
        if g["done"]:
            out.append(f"  generate: done, {g['candidates']:,} accepted candidates of {g['tokens_cap']:,} tokens; "
                       f"{g['eval_answers']:,} eval answers ({g['eval_tokens_cap']:,} tokens at most)")
        else:
            out.append(f"  generate: {g['prompts']:,} prompts x N = {g['candidates']:,} candidates, {g['tokens_cap']:,} "
                       f"tokens at most, ~{g['tokens_expected']:,} expected ({g['expected_basis']}), time "
                       + (f"~{_hms(g['seconds'])} at the measured tokens/s" if g["seconds"] else
                          "unknown (no earlier round measured tokens/s)")
                       + f"; {g['eval_answers']:,} eval answers ({g['eval_tokens_cap']:,} tokens at most)")
        if g.get("turn_answers"):  # `turns` prompts: the policy answers their earlier turns before the round's N
            out.append(f"  played turns first: {g['turn_answers']:,} answers to earlier user turns (n=1) in "
                       f"{g['turn_passes']} sampling pass(es), one after another; counted in the tokens above")
        out += _calls("judge", r["judge"]) + _calls("evaluate", r["evaluate"])
        out.append(_cost_time(r["cost"], r["time"]))
        out += [f"  note: {n}" for n in r["notes"]]
    if p.get("calibrate"):
        out.append("calibrate (once, calibrate.gold):")
        out += _calls("calibrate", p["calibrate"]["calls"])
        out.append(_cost_time(p["calibrate"]["cost"], p["calibrate"]["time"]))
    t = p["total"]
    out += ["", f"total: {t['judge_calls']:,} judge calls, {t['generate_tokens_cap']:,} tokens to generate at most "
                f"(~{t['generate_tokens_expected']:,} expected), live {_usd(t['live_usd'])} / Batch API "
                f"{_usd(t['batch_usd'])}, judging {'~' if t['judge_seconds'] else ''}{_hms(t['judge_seconds'])} live"
                + (f" or {t['batch_phases']} Batch API phase(s)" if t.get("batch_phases") else "")]
    for key in ("budget", "max_calls"):
        if key in t:
            out.append(_budget(key, t[key], c["mode_api"]))
    out += [""] + p["memory"]["lines"]
    return out


def _budget(key: str, b: dict, mode_api: str) -> str:
    name = "max_cost_usd" if key == "budget" else "max_calls"
    fmt = _usd if key == "budget" else (lambda v: f"{v:,.0f} calls")
    head = f"budget: judge.{name}={b[name]:g} over {b['scope']} ({mode_api} prices): expected {fmt(b['expected'])}"
    if b["fits"]:
        return head + " -> fits"
    if "share_of_worst_round" in b:
        return (head + f" in the largest round -> does NOT fit: covers {b['share_of_worst_round']:.0%} of it "
                f"({b['rounds_covered']} round(s) fit whole); the stage stops at the cap, "
                "a rerun with a higher cap continues")
    return (head + f" -> does NOT fit: covers the first {b['rounds_covered']} round(s); the run stops at the cap, "
            "a rerun with a higher cap continues")
