"""`rlaif plan`: what a config will make, call, cost, take and need, before anything is spent.

    rlaif plan configs/gpu-8b.yaml [key.sub=value ...] [--json]

Per round and in total: candidates and tokens to generate; judge calls by kind, counted by the
judge stage's own planning (rlaif/judge/pairs/rank.py planned_calls) on the round's real candidates
when they exist, on N placeholders per prompt otherwise; revise, evaluate and calibrate calls beside
them; input tokens from the real templates rendered on real (or placeholder) texts and counted with
the judge's tokenizer where it is known; output tokens from the reply caps, or what this run's ledgers
measured; cost live and through the Batch API against judge.max_cost_usd; time at judge.rpm/tpm and
concurrency; training memory and vLLM's KV-cache room (rlaif/train/memory.py). Nothing is written,
no weights are loaded, no call is made.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import polars as pl

from rlaif.plan_tokens import TokenCounter, input_tokens

SAMPLE = 64  # rendered calls per kind whose input tokens are counted; the mean stands for the rest
DEFAULT_LATENCY_S = 1.0  # seconds a chat call takes when no ledger has measured it (said in the output)


def main(cfg, as_json: bool = False) -> int:
    plan = build(cfg)
    print(json.dumps(plan, indent=2) if as_json else "\n".join(render(plan)))
    return 0


# ------------------------------------------------------------------ what earlier rounds measured

def measured(cfg) -> dict:
    """Mean output tokens, latency and cost per call by kind in this run's ledgers; mean response tokens."""
    out: dict = {"calls": {}, "response_tokens": None, "tokens_per_s": None}
    ledgers = sorted(Path(cfg.run_dir).glob("round-*/judge-ledger.sqlite"))
    if cfg.judge.ledger and Path(cfg.judge.ledger).exists():
        ledgers.append(Path(cfg.judge.ledger))
    rows = []
    for path in ledgers:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows += db.execute("SELECT kind, COUNT(*), SUM(output_tokens), SUM(latency_s), SUM(cost_usd) FROM calls "
                               "WHERE status='done' GROUP BY kind").fetchall()
    for kind, n, out_tok, lat, cost in rows:
        c = out["calls"].setdefault(kind, {"n": 0, "output_tokens": 0.0, "latency_s": 0.0, "cost_usd": 0.0})
        c["n"] += n
        c["output_tokens"] += out_tok or 0
        c["latency_s"] += lat or 0
        c["cost_usd"] += cost or 0
    for c in out["calls"].values():
        for k in ("output_tokens", "latency_s", "cost_usd"):
            c[k] = c[k] / c["n"]
    manifests = sorted(Path(cfg.run_dir).glob("round-*/candidates.manifest.json"))
    if manifests:
        m = json.loads(manifests[-1].read_text())
        counts = m.get("counts", {})
        if counts.get("candidates") and counts.get("tokens"):
            out["response_tokens"] = counts["tokens"] / counts["candidates"]
        out["tokens_per_s"] = (m.get("timings") or {}).get("tokens_per_s")
    return out


# ------------------------------------------------------------------ calls per round

def placeholders(prompts: pl.DataFrame, n: int, tokens: int) -> pl.DataFrame:
    """N distinct candidates per prompt of about `tokens` tokens each, where a round has none yet."""
    rows = [{"prompt_id": pid, "candidate_id": f"{pid}-{i}", "messages": m,
             "response": f"({i}) " + "word " * max(tokens - 2, 1), "num_tokens": tokens, "finish_reason": "stop"}
            for pid, m in zip(prompts["prompt_id"], prompts["messages"].to_list()) for i in range(n)]
    return pl.DataFrame(rows)


def round_candidates(cfg, k: int, prompts: pl.DataFrame, resp_tokens: int) -> tuple[pl.DataFrame, str]:
    from rlaif.judge.candidates import read_candidates, split_inputs

    rdir = cfg.round_dir(k)
    if (rdir / "candidates.manifest.json").exists():
        accepted, _ = split_inputs(read_candidates(rdir), cfg.judge)
        return accepted, "this round's candidates"
    return placeholders(prompts, cfg.generate.n, resp_tokens), f"{cfg.generate.n} placeholder candidates a prompt"


def judge_calls(cfg, accepted: pl.DataFrame) -> dict[str, int]:
    from rlaif.judge.pairs.rank import planned_calls

    calls = planned_calls(cfg, accepted) if cfg.pairs.source != "revise" else {}
    if cfg.pairs.source != "rank":  # Constitutional AI: per prompt a critique, a revision and 2 confirmations
        prompts = accepted["prompt_id"].n_unique()
        calls.update(critique=prompts, revision=prompts)
        if cfg.revise.confirm:
            key = "pairwise" if cfg.judge.mode == "pairwise" else "score"
            calls[key] = calls.get(key, 0) + 2 * prompts
    return calls


def evaluate_calls(cfg, k: int, heldout: int, train_prompts: int) -> dict[str, int]:
    """Upper bounds: the SFT answers' calls are made once and ledgered; LC's anchor is free where the
    judge stage already compared the same two candidates (rlaif/evaluate/lc_anchor.py)."""
    e = cfg.evaluate
    if not e.prompts:
        return {}
    from rlaif.judge.pairs.rank import score_kind

    j, anchors = cfg.judge, min(e.length_anchor_prompts, train_prompts)
    if e.mode == "pairwise":
        free = j.mode == "pairwise" and j.strategy == "all_pairs"  # the judge stage compared every pair already
        return {"pairwise": 2 * heldout * (1 + (e.vs_previous and k > 0)) + (0 if free else 2 * anchors)}
    per = max(len(j.checklist), 1) if j.mode == "checklist" else 1
    free = j.mode != "pairwise" or j.strategy == "best_vs_worst"  # the judge stage scored every candidate
    return {score_kind(j): per * (heldout * (2 if k == 0 else 1) + (0 if free else 2 * anchors))}


# ------------------------------------------------------------------ cost and time

def call_tokens(cfg, calls: dict[str, int], accepted: pl.DataFrame, counter: TokenCounter, seen: dict) -> dict:
    """Per kind: calls, mean input and output tokens (with their basis)."""
    from rlaif.judge.backends.openai_chat import start_style

    j = cfg.judge
    reasoning = j.backend == "openai" and j.model and start_style(j, j.model) == "reasoning"
    out = {}
    for kind, n in calls.items():
        if kind not in seen:
            seen[kind] = input_tokens(cfg, kind, accepted, counter, SAMPLE)
        m = measured_calls(cfg).get(kind)
        if m and m["n"] >= 20:
            o, basis = m["output_tokens"], f"measured: mean of {m['n']} earlier replies"
        elif kind == "reward":
            o, basis = 0, "a reward model writes nothing"
        elif kind in ("critique", "revision"):
            o, basis = cfg.revise.max_tokens, "revise.max_tokens cap"
        else:
            o = j.max_completion_tokens if reasoning else j.reply_tokens()
            basis = "judge.max_completion_tokens cap (reasoning)" if reasoning else "reply cap (judge.max_tokens)"
        out[kind] = {"calls": n, "input_tokens": round(seen[kind], 1), "output_tokens": round(o, 1), "output_basis": basis}
    return out


_MEASURED: dict = {}


def measured_calls(cfg) -> dict:
    key = cfg.run_dir
    if key not in _MEASURED:
        _MEASURED[key] = measured(cfg)["calls"]
    return _MEASURED[key]


def cost(cfg, by_kind: dict) -> dict:
    j = cfg.judge
    if j.backend != "openai":
        return {"live_usd": 0.0, "batch_usd": 0.0, "priced": True, "note": f"judge.backend={j.backend}: no per-call price"}
    price = j.prices.get(j.model)
    if price is None:
        return {"live_usd": None, "batch_usd": None, "priced": False,
                "note": f"judge.prices has no price for {j.model!r}: cost unknown"}
    live = sum(v["calls"] * (v["input_tokens"] * price[0] + v["output_tokens"] * price[1]) for v in by_kind.values()) / 1e6
    return {"live_usd": round(live, 4), "batch_usd": round(live * j.batch_discount, 4), "priced": True}


def duration(cfg, by_kind: dict) -> dict:
    """Seconds to send the calls live: concurrency over latency, capped by rpm and tpm."""
    j = cfg.judge
    n = sum(v["calls"] for v in by_kind.values())
    if not n:
        return {"seconds": 0.0, "basis": "no calls"}
    lat = [m["latency_s"] for m in measured_calls(cfg).values() if m["n"] >= 20]
    latency = sum(lat) / len(lat) if lat else DEFAULT_LATENCY_S
    conc = j.concurrency if j.backend == "openai" else 1
    rates = {"concurrency": conc / latency}
    if j.rpm:
        rates["rpm"] = j.rpm / 60
    if j.tpm:
        per = sum(v["calls"] * (v["input_tokens"] + v["output_tokens"]) for v in by_kind.values()) / n
        rates["tpm"] = j.tpm / 60 / per
    limit = min(rates, key=rates.get)
    basis = (f"{'measured' if lat else 'assumed'} latency {latency:.2f} s, limited by {limit}"
             + ("" if j.backend == "openai" else " (local judge: batches of judge.batch_size, one at a time)"))
    return {"seconds": round(n / rates[limit], 1), "basis": basis}


# ------------------------------------------------------------------ the whole plan

def build(cfg) -> dict:
    from rlaif.io import read_prompts

    _MEASURED.clear()  # what the ledgers hold now, not at an earlier plan of the same run
    prompts = read_prompts(cfg.prompts, cfg.prompts_split)
    if cfg.generate.max_prompts:
        prompts = prompts.head(cfg.generate.max_prompts)
    heldout = 0
    if cfg.evaluate.prompts and Path(cfg.evaluate.prompts).exists():
        heldout = read_prompts(cfg.evaluate.prompts, cfg.evaluate.prompts_split).height
        heldout = min(heldout, cfg.evaluate.n_prompts or heldout)
    m = measured(cfg)
    g = cfg.generate
    resp = m["response_tokens"] or g.max_tokens
    counter, seen, rounds = TokenCounter(cfg), {}, []
    for k in range(cfg.rounds):
        accepted, basis = round_candidates(cfg, k, prompts, round(resp))
        judge = call_tokens(cfg, judge_calls(cfg, accepted), accepted, counter, seen)
        ev = call_tokens(cfg, evaluate_calls(cfg, k, heldout, prompts.height), accepted, counter, seen)
        gen_tokens = prompts.height * g.n * g.max_tokens
        rounds.append({
            "round": k, "candidates_basis": basis,
            "generate": {"prompts": prompts.height, "candidates": prompts.height * g.n, "tokens_cap": gen_tokens,
                         "tokens_expected": round(prompts.height * g.n * resp),
                         "expected_basis": "measured mean of earlier rounds" if m["response_tokens"] else "the cap",
                         "eval_answers": heldout * (2 if k == 0 else 1)},
            "judge": judge, "evaluate": ev,
            "cost": cost(cfg, {**judge, **{f"eval:{a}": b for a, b in ev.items()}}),
            "time": duration(cfg, {**judge, **{f"eval:{a}": b for a, b in ev.items()}}),
        })
        if m["tokens_per_s"]:
            rounds[-1]["generate"]["seconds"] = round(rounds[-1]["generate"]["tokens_expected"] / m["tokens_per_s"], 1)
    return {"config": {"run_dir": cfg.run_dir, "rounds": cfg.rounds, "judge": f"{cfg.judge.backend}:{cfg.judge.model or cfg.model}",
                       "mode_api": cfg.judge.mode_api},
            "tokenizer": counter.name, "rounds": rounds, "total": totals(cfg, rounds), "memory": memory(cfg)}


def totals(cfg, rounds: list[dict]) -> dict:
    calls = sum(v["calls"] for r in rounds for sec in ("judge", "evaluate") for v in r[sec].values())
    live = [r["cost"]["live_usd"] for r in rounds]
    t = {"judge_calls": calls, "generate_tokens_cap": sum(r["generate"]["tokens_cap"] for r in rounds),
         "live_usd": None if None in live else round(sum(live), 4),
         "batch_usd": None if None in live else round(sum(r["cost"]["batch_usd"] for r in rounds), 4),
         "judge_seconds": round(sum(r["time"]["seconds"] for r in rounds), 1)}
    cap = cfg.judge.max_cost_usd
    if cap is not None and t["live_usd"] is not None:
        spend = t["batch_usd"] if cfg.judge.mode_api == "batch" else t["live_usd"]
        t["budget"] = {"max_cost_usd": cap, "expected_usd": spend, "fits": spend <= cap}
    if cfg.judge.max_calls is not None:
        t["max_calls"] = {"max_calls": cfg.judge.max_calls, "fits": calls <= cfg.judge.max_calls}
    return t


def memory(cfg) -> dict:
    from rlaif.train.memory import plan_memory

    return plan_memory(cfg)


def _usd(v) -> str:
    return "unknown" if v is None else f"${v:,.2f}"


def _hms(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def render(p: dict) -> list[str]:
    c = p["config"]
    out = [f"rlaif plan: {c['rounds']} round(s), judge {c['judge']} ({c['mode_api']}); input tokens counted with "
           f"{p['tokenizer']}", ""]
    for r in p["rounds"]:
        g = r["generate"]
        out.append(f"round {r['round']} ({r['candidates_basis']}):")
        out.append(f"  generate: {g['prompts']:,} prompts x N = {g['candidates']:,} candidates, {g['tokens_cap']:,} "
                   f"tokens at most, ~{g['tokens_expected']:,} expected ({g['expected_basis']})"
                   + (f", ~{_hms(g['seconds'])}" if g.get("seconds") else "") + f"; {g['eval_answers']:,} eval answers")
        for sec in ("judge", "evaluate"):
            for kind, v in r[sec].items():
                out.append(f"  {sec} {kind}: {v['calls']:,} calls x ~{v['input_tokens']:,.0f} in + "
                           f"{v['output_tokens']:,.0f} out tokens ({v['output_basis']})")
        co, t = r["cost"], r["time"]
        out.append(f"  cost: live {_usd(co['live_usd'])}, Batch API {_usd(co['batch_usd'])}"
                   + (f" ({co['note']})" if co.get("note") else "")
                   + f"; time live ~{_hms(t['seconds'])} ({t['basis']})")
    t = p["total"]
    out += ["", f"total: {t['judge_calls']:,} judge calls, {t['generate_tokens_cap']:,} tokens to generate at most, "
                f"live {_usd(t['live_usd'])} / Batch API {_usd(t['batch_usd'])}, judging ~{_hms(t['judge_seconds'])} live"]
    if "budget" in t:
        b = t["budget"]
        out.append(f"budget: judge.max_cost_usd={b['max_cost_usd']:g}: expected {_usd(b['expected_usd'])} -> "
                   + ("fits" if b["fits"] else "does NOT fit: the run stops at the cap; a rerun with a higher cap continues"))
    if "max_calls" in t:
        out.append(f"budget: judge.max_calls={t['max_calls']['max_calls']}: "
                   + ("fits" if t["max_calls"]["fits"] else "does NOT fit"))
    out += [""] + p["memory"]["lines"]
    return out
