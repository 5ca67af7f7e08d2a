"""`rlaif plan`: what a config will make, call, cost, take and need, before anything is spent.

    rlaif plan configs/gpu-8b.yaml [key.sub=value ...] [--json]

Per round and in total: candidates and tokens to generate; judge calls by kind, counted by the
stages' own planning (rlaif/plan_calls.py) on the round's real candidates when they exist, on N
placeholders per prompt otherwise; revise, evaluate and calibrate calls beside them; input tokens from
the real templates rendered on those texts and counted with the judge's tokenizer where it is known
(rlaif/plan_tokens.py); output tokens from the reply caps, or what this run's ledgers measured for the
same judge (rlaif/plan_measure.py); cost live and through the Batch API against judge.max_cost_usd and
judge.max_calls (both cap one ledger: each round's, or the run's with judge.ledger); time at judge.rpm/tpm
and concurrency; training memory and vLLM's KV-cache room (rlaif/train/memory.py). Nothing is written,
no weights are loaded, no call is made.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlaif import plan_calls as C
from rlaif.io import SINGLE_KINDS
from rlaif import plan_measure as M
from rlaif.plan_tokens import TokenCounter, input_tokens

SAMPLE = 64  # rendered calls per kind whose input tokens are counted; the mean stands for the rest
CRITIC_KINDS = ("critique", "revision")  # sent by revise.critic when it is set, priced at its prices


def main(cfg, as_json: bool = False) -> int:
    from rlaif.plan_render import render

    plan = build(cfg)
    print(json.dumps(plan, indent=2) if as_json else "\n".join(render(plan)))
    return 0


def judge_of(cfg, kind: str):
    return (cfg.revise.critic or cfg.judge) if kind in CRITIC_KINDS else cfg.judge


def reply_cap(cfg, kind: str) -> tuple[float, str]:
    """The most output tokens a `kind` call may bill (what the runner reserves: runner.py `_cap_tokens`)."""
    from rlaif.judge.backends.openai_chat import start_style

    j = judge_of(cfg, kind)
    if kind == "reward":
        return 0, "a reward model writes nothing"
    if kind == "verify":
        return 0, "the verifier runs checks: no model writes"
    if j.backend == "openai" and j.model and start_style(j, j.model) == "reasoning":
        return j.max_completion_tokens, "judge.max_completion_tokens cap (reasoning: hidden tokens billed)"
    if kind in CRITIC_KINDS:
        return cfg.revise.max_tokens, "revise.max_tokens cap"
    if kind == "judgment":
        return j.meta_max_tokens, "judge.meta_max_tokens cap"
    if kind == "meta_pairwise":
        return 1, "one label read off the logits"
    return j.reply_tokens(), "reply cap (judge.max_tokens)"


def call_tokens(cfg, calls: dict, rows, ctx: dict, tag: str) -> dict:
    """Per kind: calls, mean input tokens (real templates on `rows`, counted once per kind and `tag`)
    and output tokens (with their basis)."""
    from rlaif.judge.runner import spec_version

    out = {}
    for kind, n in sorted(calls.items(), key=lambda kv: kv[0] == "revision"):  # a revision carries the critique
        version = spec_version(ctx["spec"], kind) if kind in ctx["spec"].templates or kind == "reward" else None
        jid = ctx["ids"]["critic" if kind in CRITIC_KINDS else "judge"]
        # pairwise_turns: evaluation's per-turn calls, kind pairwise in the ledger (a version per turn)
        m = M.per_kind(ctx["rows"], jid, "pairwise" if kind == "pairwise_turns" else kind, version)
        o, basis = (m["output_tokens"], m["basis"]) if m else reply_cap(cfg, kind)
        key = (kind, tag)
        if key not in ctx["seen"]:
            critique = out.get("critique", {}).get("output_tokens", 0)
            ctx["seen"][key] = input_tokens(cfg, kind, rows, ctx["counter"], SAMPLE, critique)
        out[kind] = {"calls": n, "input_tokens": round(ctx["seen"][key], 1), "output_tokens": round(o, 1),
                     "output_basis": basis, "latency_s": m and round(m["latency_s"], 3)}
    return out


def cost(cfg, by_kind: dict) -> dict:
    """Live and Batch API cost of these calls at judge.prices (revise.critic's for its calls)."""
    live = batch = 0.0
    notes = []
    for kind, v in by_kind.items():
        j = judge_of(cfg, kind)
        if j.backend != "openai" or not v["calls"]:
            continue
        price = j.prices.get(j.model)
        if price is None:
            notes.append(f"{'revise.critic' if j is not cfg.judge else 'judge'}.prices has no price for {j.model!r}")
            continue
        usd = v["calls"] * (v["input_tokens"] * price[0] + v["output_tokens"] * price[1]) / 1e6
        live, batch = live + usd, batch + usd * j.batch_discount
    if notes:
        return {"live_usd": None, "batch_usd": None, "note": "; ".join(sorted(set(notes))) + ": cost unknown"}
    local = bool(by_kind) and all(judge_of(cfg, k).backend != "openai" for k in by_kind)
    return {"live_usd": round(live, 4), "batch_usd": round(batch, 4),
            **({"note": f"judge.backend={cfg.judge.backend}: no per-call price"} if local else {})}


def duration(cfg, by_kind: dict, phases: int) -> dict:
    """Seconds to send the calls live: concurrency over latency, capped by rpm and tpm; a local judge
    runs its batches one after another (its ledger's latency_s is per call). Batch API: phases x window."""
    j = cfg.judge
    n = sum(v["calls"] for v in by_kind.values())
    out = {"seconds": 0.0, "basis": "no calls"} if not n else None
    lat = [v["latency_s"] for v in by_kind.values() if v["latency_s"] is not None]
    if out is None and j.backend != "openai":
        out = ({"seconds": round(sum(v["calls"] * (v["latency_s"] or max(lat)) for v in by_kind.values()), 1),
                "basis": "measured latency of this judge's earlier calls"} if lat else
               {"seconds": None, "basis": f"judge.backend={j.backend}: unknown until a round has measured it"})
    if out is None:
        latency, said = (sum(lat) / len(lat), "measured") if lat else (1.0, "assumed")
        rates = {"concurrency": j.concurrency / latency}
        if j.rpm:
            rates["rpm"] = j.rpm / 60
        if j.tpm:
            rates["tpm"] = j.tpm / 60 / (sum(v["calls"] * (v["input_tokens"] + v["output_tokens"])
                                          for v in by_kind.values()) / n)
        limit = min(rates, key=rates.get)
        out = {"seconds": round(n / rates[limit], 1), "basis": f"{said} latency {latency:.2f} s, limited by {limit}"}
    if j.backend == "openai" and n:  # each phase waits for its batches to finish before the next is sent
        out.update(batch_phases=phases, batch_window=j.batch_completion_window)
    return out


def phases(cfg, kinds) -> int:
    """Batch API round trips the judge stage waits for, in order: generated checklists, single-candidate
    calls, pairwise (rank.py rank_round); critique, revision, confirmations (revise.py)."""
    from rlaif.judge.session import score_kind

    singles = set(SINGLE_KINDS) & set(kinds)
    rank = cfg.pairs.source != "revise"
    n = ("checklist_writer" in kinds) + bool(rank and singles) + bool(rank and "pairwise" in kinds
                                                                      and score_kind(cfg.judge) == "score")
    if cfg.pairs.source != "rank":
        n += 2 + bool(cfg.revise.confirm)
    return n


def section(cfg, calls: dict, rows, ctx: dict, ph: int, tag: str) -> dict:
    by_kind = call_tokens(cfg, calls, rows, ctx, tag)
    return {"calls": by_kind, "cost": cost(cfg, by_kind),
            "time": duration(cfg, by_kind, ph)}


def build(cfg) -> dict:
    from rlaif.prompts import prompt_args, read_prompts
    from rlaif.judge.templates import build_spec

    prompts = read_prompts(*prompt_args(cfg))
    if cfg.generate.max_prompts:
        prompts = prompts.head(cfg.generate.max_prompts)
    heldout = (0, None)  # held-out prompts, and every user turn of them when evaluation plays them
    if cfg.evaluate.prompts and Path(cfg.evaluate.prompts).exists():
        held = read_prompts(*prompt_args(cfg, heldout=True))
        held = held.head(cfg.evaluate.n_prompts) if cfg.evaluate.n_prompts else held
        played = C.played_turns(held)
        heldout = (held.height, played["turns"] if played["answers"] else None)
    gen = M.generation(cfg)
    counter = TokenCounter(cfg)
    ctx = {"counter": counter, "seen": {}, "spec": build_spec(cfg.judge), "ids": M.judge_ids(cfg),
           "rows": M.ledger_rows(cfg)}
    rounds = [one_round(cfg, k, prompts, heldout, gen, ctx) for k in range(cfg.rounds)]
    gold = C.gold_as_candidates(cfg)
    calib = None
    if gold is not None:
        cc = C.calibrate_calls(cfg, gold)
        calib = section(cfg, cc, gold, ctx, 1 + ("checklist_writer" in cc), "gold")
    return {"config": {"run_dir": cfg.run_dir, "rounds": cfg.rounds, "mode_api": cfg.judge.mode_api,
                       "judge": f"{cfg.judge.backend}:{cfg.judge.model or cfg.model}"
                                + (" (round k's sampling policy)" if cfg.judge.model == "policy" else "")},
            "tokenizer": counter.name, "rounds": rounds, "calibrate": calib,
            "total": totals(cfg, rounds, calib), "memory": memory(cfg)}


def one_round(cfg, k: int, prompts, heldout: tuple, gen: dict, ctx: dict) -> dict:
    """heldout: (held-out prompts, their user turns or None when the set has no `turns` rows)."""
    g = cfg.generate
    resp = gen["response_tokens"] or g.max_tokens
    accepted, basis = C.round_candidates(cfg, k, prompts, round(resp))
    jc = C.judge_calls(cfg, accepted)
    judge = section(cfg, jc, accepted, ctx, phases(cfg, jc), f"round-{k}")
    ev = section(cfg, C.evaluate_calls(cfg, k, heldout[0], accepted, heldout[1]), accepted, ctx, 1, f"round-{k}")
    answers = heldout[1] if heldout[1] is not None else heldout[0]  # a played set: an answer per user turn
    expected = round(prompts.height * g.n * resp)
    generate = {"prompts": prompts.height, "candidates": prompts.height * g.n,
                "tokens_cap": prompts.height * g.n * g.max_tokens, "tokens_expected": expected,
                "expected_basis": f"measured mean of {gen['from']}" if gen["response_tokens"] else "the cap",
                "seconds": round(expected / gen["tokens_per_s"], 1) if gen["tokens_per_s"] else None,
                "eval_answers": answers * (2 if k == 0 else 1), "done": basis.startswith("this round's"),
                "eval_tokens_cap": answers * (2 if k == 0 else 1) * (cfg.evaluate.max_tokens or g.max_tokens)}
    played = C.played_turns(prompts)
    if played["answers"] and not generate["done"]:  # `turns` rows: the policy's own earlier turns first, n=1 each
        generate.update(turn_answers=played["answers"], turn_passes=played["passes"],
                        tokens_cap=generate["tokens_cap"] + played["answers"] * g.max_tokens,
                        tokens_expected=expected + round(played["answers"] * resp))
        if gen["tokens_per_s"]:
            generate["seconds"] = round(generate["tokens_expected"] / gen["tokens_per_s"], 1)
    if generate["done"]:  # generated already: what the judge will read, not what sampling may make
        tokens = int(accepted["num_tokens"].sum() or 0)
        generate.update(candidates=accepted.height, tokens_cap=tokens, tokens_expected=tokens,
                        expected_basis="generated already: accepted candidates", seconds=0.0)
    both = [judge, ev]
    notes = []
    if cfg.judge.mode == "checklist" and cfg.judge.checklist_from_prompt:
        notes.append("judge.checklist_from_prompt: only the configured items are counted; the generated ones "
                     "are not known before they are written")
    if cfg.revise.critic is not None and cfg.pairs.source != "rank":
        notes.append("revise.critic: its calls priced at its own prices, their tokens counted as the judge's")
    done = None if cfg.judge.ledger else M.spent(cfg.round_dir(k) / "judge-ledger.sqlite")
    if done and done["calls"]:
        notes.append(f"round-{k}/judge-ledger.sqlite already holds {done['calls']:,} finished calls "
                     f"(${done['cost_usd']:,.2f}): a rerun does not pay for those again, so this round costs that much less")
    return {"round": k, "candidates_basis": basis, "generate": generate, "judge": judge["calls"],
            "evaluate": ev["calls"], "cost": _sum_cost(both), "time": _sum_time(both), "notes": notes,
            "ledger_done": done}


def _sum_cost(parts: list[dict]) -> dict:
    live = [p["cost"]["live_usd"] for p in parts]
    notes = sorted({p["cost"]["note"] for p in parts if p["cost"].get("note")})
    out = {"live_usd": None if None in live else round(sum(live), 4),
           "batch_usd": None if None in live else round(sum(p["cost"]["batch_usd"] for p in parts), 4)}
    return {**out, **({"note": "; ".join(notes)} if notes else {})}


def _sum_time(parts: list[dict]) -> dict:
    secs = [p["time"]["seconds"] for p in parts]
    out = {"seconds": None if None in secs else round(sum(secs), 1),
           "basis": "; ".join(sorted({p["time"]["basis"] for p in parts if p["time"]["basis"] != "no calls"}))}
    phases = [p["time"]["batch_phases"] for p in parts if "batch_phases" in p["time"]]
    if phases:
        out.update(batch_phases=sum(phases),
                   batch_window=next(p["time"]["batch_window"] for p in parts if "batch_window" in p["time"]))
    return out


def totals(cfg, rounds: list[dict], calib: dict | None) -> dict:
    per_round = [sum(v["calls"] for sec in ("judge", "evaluate") for v in r[sec].values()) for r in rounds]
    live = [r["cost"]["live_usd"] for r in rounds] + ([calib["cost"]["live_usd"]] if calib else [])
    secs = [r["time"]["seconds"] for r in rounds] + ([calib["time"]["seconds"]] if calib else [])
    known = None not in live
    t = {"judge_calls": sum(per_round) + (sum(v["calls"] for v in calib["calls"].values()) if calib else 0),
         "generate_tokens_cap": sum(r["generate"]["tokens_cap"] for r in rounds if not r["generate"]["done"]),
         "generate_tokens_expected": sum(r["generate"]["tokens_expected"] for r in rounds if not r["generate"]["done"]),
         "live_usd": round(sum(live), 4) if known else None,
         "batch_usd": round(sum(r["cost"]["batch_usd"] for r in rounds) + (calib["cost"]["batch_usd"] if calib else 0), 4)
         if known else None,
         "judge_seconds": None if None in secs else round(sum(secs), 1),
         "batch_phases": sum(p["time"].get("batch_phases", 0) for p in rounds + ([calib] if calib else []))}
    spend = [r["cost"]["batch_usd" if cfg.judge.mode_api == "batch" else "live_usd"] for r in rounds]
    if cfg.judge.max_cost_usd is not None and None not in spend:
        t["budget"] = budget(cfg, "max_cost_usd", cfg.judge.max_cost_usd, spend)
    if cfg.judge.max_calls is not None:
        t["max_calls"] = budget(cfg, "max_calls", cfg.judge.max_calls, per_round)
    return t


def budget(cfg, key: str, cap: float, per_round: list[float]) -> dict:
    """Does each ledger's expected spend fit `cap`? A cap counts one ledger (rlaif/judge/ledger.py): each
    round's own, or with judge.ledger the run's, where it covers the first `rounds_covered` rounds."""
    if cfg.judge.ledger:
        covered, acc = 0, 0.0
        for x in per_round:
            acc += x
            covered += acc <= cap
        return {key: cap, "scope": "the run (judge.ledger)", "expected": round(sum(per_round), 4),
                "fits": sum(per_round) <= cap, "rounds_covered": covered}
    worst = max(per_round, default=0)
    return {key: cap, "scope": "each round's ledger", "expected": round(worst, 4), "fits": worst <= cap,
            "share_of_worst_round": 1.0 if worst <= cap else round(cap / worst, 3),
            "rounds_covered": sum(x <= cap for x in per_round)}


def memory(cfg) -> dict:
    try:
        from rlaif.train.memory import plan_memory
    except ImportError as e:
        if e.name != "rlaif.train.memory":
            raise
        return {"lines": ["memory: (not available)"], "data": {}}
    return plan_memory(cfg)
