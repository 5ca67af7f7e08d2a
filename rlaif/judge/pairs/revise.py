"""Constitutional AI pairs (pairs.source revise|both): critique, revise, confirm.

    rlaif judge --config configs/quickstart.yaml pairs.source=revise 'judge.principles=[Be concise.]'

Bai et al. 2022 ("Constitutional AI: Harmlessness from AI Feedback", arXiv 2212.08073, sec. 3.1)
make preference data without a second sample: a model critiques a response against one principle,
then rewrites it given its critique, and (revision, original) is a (chosen, rejected) pair. Here,
per prompt, one sampled response (the first by candidate_id that was not cut off, else the first):
1. the principle: one of judge.principles, drawn by a hash of (seed, round, prompt_id), recorded;
2. a critique call, then a revision call, to the critic (revise.critic, default the judge), through
   the ledger like judge calls: keyed by the critic identity, the template version (the principle is
   its criteria), prompt, original, critique (revisions) and reply cap; budgets, retries, rate limits
   and the Batch API as for judging. Replies are ledger rows of kind critique/revision: verdict
   "text" (or "cut_off"), the text in `rationale`, the reply as received in `raw`;
3. a revision left unchanged (same text up to whitespace) or cut off is dropped, never confirmed. A
   reply that wraps its revision in the data markers it was shown (small models copy the prompt's
   format, then ramble on) is unwrapped: the revision is the first marked block, complete once closed;
4. with revise.confirm the judge compares revision and original under the same principle (pairwise:
   both orders; judge.mode=score: each scored): the filter keeps only a revision that wins.
round-K/revisions.parquet (REVISIONS_SCHEMA) says what happened to each; the filter
(rlaif/judge/pairs/revise_pairs.py) turns it and the confirmations into pairs and counts.
"""
from __future__ import annotations

import re

import polars as pl

from rlaif.errors import BudgetExceeded, UserError
from rlaif.io import MESSAGES, stable_id, write_parquet
from rlaif.judge import templates as T
from rlaif.judge.session import JudgeSession, same_text

REVISIONS = "revisions.parquet"
# status: ok (confirmable) | critique_failed | revision_failed (no text) | revision_unchanged |
# revision_cut_off | pending (no reply yet: the stage stops before any pair exists)
REVISIONS_SCHEMA = pl.Schema({
    "prompt_id": pl.String, "candidate_id": pl.String, "revision_id": pl.String, "messages": MESSAGES,
    "principle_index": pl.Int32, "principle": pl.String, "critique": pl.String, "revision": pl.String,
    "revision_tokens": pl.Int32, "status": pl.String, "confirm_keys": pl.List(pl.String), "round": pl.Int32,
})


# The first <<<BEGIN_DATA ...>>> ... <<<END_DATA ...>>> block of a reply; the 135M demo model writes ">>".
WRAPPED = re.compile(r"^\s*<<<\s*BEGIN_DATA[^\n>]*>>>?[ \t]*\n?(.*?)\n?<<<\s*END_DATA[^\n>]*>>>?", re.DOTALL)


def unwrap(row: dict) -> tuple[str, bool, int]:
    """(revision text, complete, tokens) of a finished revision row. Tokens are the critic's count,
    scaled by the characters kept when the text was unwrapped from a marked block."""
    text, tokens = row["rationale"] or "", row["output_tokens"] or 0
    m = WRAPPED.match(text)
    if not m:
        return text, row["verdict"] == "text", tokens
    inner = m.group(1).strip()
    return inner, True, max(1, round(tokens * len(inner) / max(len(text), 1)))


def principle_index(cfg, prompt_id: str) -> int:
    """The pair's principle: a hash of (seed, round, prompt_id), so reruns and machines agree (never hash())."""
    return int(stable_id([cfg.seed, cfg.round, prompt_id], n=12), 16) % len(cfg.judge.principles)


def pick(accepted: pl.DataFrame) -> pl.DataFrame:
    """One response per prompt to revise: the first by candidate_id that was not cut off, else the first."""
    cut = (pl.col("finish_reason") == "length").fill_null(False)
    return (accepted.with_columns(cut=cut).sort("prompt_id", "cut", "candidate_id")
            .unique("prompt_id", keep="first", maintain_order=True).drop("cut"))


def check(cfg) -> None:
    """Every bad setting is one line, before any call."""
    if not cfg.judge.principles:
        raise UserError(f"pairs.source={cfg.pairs.source}: judge.principles is empty; give the principles to "
                        "critique and revise under, e.g. judge.principles='[Be concise., Answer the question first.]'")
    critic = cfg.revise.critic or cfg.judge
    if critic.backend not in ("openai", "local"):
        raise UserError(f"revise.critic: backend {critic.backend} does not write text; use openai or local "
                        "(revise.critic defaults to the judge)")
    if cfg.revise.confirm and (cfg.judge.backend == "reward_model" or cfg.judge.mode == "checklist"):
        raise UserError("revise.confirm: the judge compares under the pair's principle, so it needs judge.mode "
                        "pairwise or score with an LLM judge; set revise.confirm=false otherwise")


def critic_session(js: JudgeSession, cfg) -> JudgeSession:
    """The judge's own session by default (one budget); revise.critic: its own, on the same ledger,
    under the judge's caps as well as its own (the smaller wins): judge.max_cost_usd and
    judge.max_calls cap everything written to the ledger, the critic's calls included (issue 18)."""
    if cfg.revise.critic is None:
        return js
    c, j, names = cfg.revise.critic, cfg.judge, {}
    caps = {}
    for cap in ("max_calls", "max_cost_usd"):
        own, judge = getattr(c, cap), getattr(j, cap)
        if judge is not None and (own is None or judge < own):
            caps[cap], names[cap] = judge, f"judge.{cap}"
        else:
            names[cap] = f"revise.critic.{cap}"
    if caps.get("max_cost_usd") is not None and c.backend == "openai" and c.model not in c.prices:
        raise UserError(f"revise.critic.prices: no price for {c.model!r}; judge.max_cost_usd caps the whole "
                        "ledger, the critic's calls included, so the critic needs a price")
    session = JudgeSession(cfg.model_copy(update={"judge": c.model_copy(update=caps)}), js.ledger.path)
    session.runner.cap_names = names
    return session


def critic_spec(critic: JudgeSession, rc) -> T.Spec:
    templates = dict(critic.spec.templates)
    for kind, path in (("critique", rc.critique_template), ("revision", rc.revision_template)):
        if path:
            templates[kind] = T.kind_template(path, kind, f"revise.{kind}_template")
    return T.Spec(templates, critic.spec.criteria, critic.spec.explain, critic.spec.verdicts, "",
                  max_history_tokens=critic.spec.max_history_tokens)


def replies(session: JudgeSession, calls: list) -> dict[str, dict]:
    """key -> its finished ledger row (verdict, rationale, output_tokens, ...)."""
    return {r["key"]: r for r in session.results(calls).iter_rows(named=True)} if calls else {}


def status_of(crit: dict | None, rev: dict | None, original: str) -> str:
    if crit is None:
        return "pending"
    if crit["verdict"] == "invalid":  # a cut-off critique still says something: it is used
        return "critique_failed"
    if rev is None:
        return "pending"
    if rev["verdict"] == "invalid":
        return "revision_failed"
    text, complete, _ = unwrap(rev)
    if not complete:
        return "revision_cut_off"
    if not text:
        return "revision_failed"
    return "revision_unchanged" if same_text(text, original) else "ok"


def revise_round(js: JudgeSession, cfg, accepted: pl.DataFrame) -> list:
    """Critique, revise and (revise.confirm) confirm this round's picks; writes revisions.parquet and
    returns every call made, for judgments.parquet."""
    check(cfg)
    critic = critic_session(js, cfg)
    try:
        rows = pick(accepted).to_dicts()
        return _revise(js, critic, cfg, rows)
    finally:
        if critic is not js:
            critic.close()


def _revise(js: JudgeSession, critic: JudgeSession, cfg, rows: list[dict]) -> list:
    principles, n = cfg.judge.principles, cfg.revise.max_tokens
    base = critic_spec(critic, cfg.revise)
    for r in rows:
        r["principle_index"] = i = principle_index(cfg, r["prompt_id"])
        r["principle"], r["spec"] = principles[i], T.principle_spec(base, principles[i])
    crit = {r["candidate_id"]: critic.text_call("critique", r["prompt_id"], r["messages"],
                                                (r["candidate_id"], r["response"]), r["spec"], str(r["principle_index"]), n)
            for r in rows}
    critic.send(list(crit.values()), "revise: critique")
    got = replies(critic, list(crit.values()))
    rev = {}
    for r in rows:
        c = got.get(crit[r["candidate_id"]].key)
        r["critique"] = c["rationale"] if c else None
        if c and c["verdict"] != "invalid":
            rev[r["candidate_id"]] = critic.text_call("revision", r["prompt_id"], r["messages"],
                                                      (r["candidate_id"], r["response"]), r["spec"],
                                                      str(r["principle_index"]), n, critique=c["rationale"])
    critic.send(list(rev.values()), "revise: revision")
    got.update(replies(critic, list(rev.values())))
    if critic.runner.stopped and critic is not js:
        raise BudgetExceeded(f"revise.critic stopped: {critic.runner.stopped}: ${critic.runner.cost:.4f} spent over "
                             f"{critic.runner.calls} paid calls in the ledger; rerun (with a higher cap) to "
                             "continue: finished calls are never paid again")
    confirm = _statuses_and_confirmations(js, cfg, rows, crit, rev, got)
    write_revisions(cfg, rows)
    return list(crit.values()) + list(rev.values()) + confirm


def _statuses_and_confirmations(js: JudgeSession, cfg, rows, crit, rev, got) -> list:
    confirm = []
    for r in rows:
        cid = r["candidate_id"]
        c, v = got.get(crit[cid].key), got.get(rev[cid].key) if cid in rev else None
        r["status"] = status_of(c, v, r["response"])
        r["revision_id"] = f"{cid}-rev"
        r["revision"], _, r["revision_tokens"] = unwrap(v) if v else (None, False, None)  # tokens: the critic's count
        r["confirm_keys"] = []
        if r["status"] == "ok" and cfg.revise.confirm:
            spec = T.principle_spec(js.spec, r["principle"])  # the judge's templates, the pair's principle
            new, old = (r["revision_id"], r["revision"]), (cid, r["response"])
            calls = (js.pairwise(r["prompt_id"], r["messages"], new, old, spec=spec) if cfg.judge.mode == "pairwise"
                     else js.single(r["prompt_id"], r["messages"], new, spec=spec)
                     + js.single(r["prompt_id"], r["messages"], old, spec=spec))
            r["confirm_keys"] = [c.key for c in calls]
            confirm += calls
    js.send(confirm, "revise: confirm")
    return confirm


def write_revisions(cfg, rows: list[dict]) -> None:
    df = pl.DataFrame([{k: r.get(k) for k in REVISIONS_SCHEMA} | {"round": cfg.round} for r in rows],
                      schema=REVISIONS_SCHEMA)
    write_parquet(cfg.round_dir() / REVISIONS, df, REVISIONS_SCHEMA)
