"""The judge as configured, with its ledger: the one public way to send judge calls.

    with JudgeSession(cfg, ledger_path) as js:
        calls = js.pairwise(pid, chat, ("c1", text1), ("c2", text2))   # both orders
        calls += js.single(pid, chat, ("c3", text3))                    # score / checklist / reward
        js.send(calls, "judge: pairwise")                               # missing ones only
        judgments = js.results(calls)                                   # judgments schema

Used by the judge stage, evaluate and calibrate alike: every call is keyed on the judge identity
and the template version (rlaif.judge.identity, rlaif.judge.templates), so a call with a stored
reply is never paid twice, whichever command asks for it.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from rlaif.errors import UserError
from rlaif.io import JUDGMENTS_SCHEMA, write_parquet_chunks
from rlaif.judge import templates as T
from rlaif.judge.backends import Call
from rlaif.judge.identity import judge_id, judge_identity
from rlaif.judge.ledger import Ledger, call_key
from rlaif.judge.runner import Runner


def judge_model_name(cfg) -> str:
    j = cfg.judge
    if j.backend == "verifier":  # no model: checks run on each candidate
        return "verifier"
    if j.backend == "openai":
        if not j.model:
            raise UserError("judge.model: required with judge.backend=openai (the endpoint's model name)")
        return j.model
    from rlaif.models import resolve_model

    name = cfg.model if j.model in (None, "policy") else j.model  # policy: the SFT model (its adapter apart)
    try:
        return resolve_model(name)
    except UserError as e:
        raise UserError(f"{'judge.model' if j.model else 'model (the judge defaults to it)'}: {e}") from None


def judge_weights(cfg, after: int | None = None) -> tuple[str, str | None]:
    """(model folder or name, LoRA adapter folder or None) of the judge. Under judge.model=policy the
    judge is the policy after round `after`'s training (default cfg.round - 1: round k's sampling
    policy, Self-Rewarding's judge of its own candidates); after < 0 is the SFT model. With
    train.reference=previous that is the merged earlier policy plus the round's adapter, as generation
    samples it (rlaif/train/policy.py)."""
    after = cfg.round - 1 if after is None else after
    if cfg.judge.model != "policy" or after < 0:
        return judge_model_name(cfg), None
    from rlaif.train.policy import adapter_dir, policy_base

    adapter = adapter_dir(cfg, after)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"judge.model=policy: round {after}'s adapter {adapter} is not trained yet (the judge of round "
                        f"{after + 1} is that round's sampling policy); run round {after}'s train stage first")
    return policy_base(cfg, after), str(adapter)


def score_kind(j) -> str:
    """What a single-candidate call is: a reward, the verifier's checks, a checklist, or a rubric score."""
    return {"reward_model": "reward", "verifier": "verify"}.get(
        j.backend, "checklist" if j.mode == "checklist" else "score")


def send_all(js: "JudgeSession", calls, desc: str, total: int) -> Plan:
    """Send lazily made calls; the plan holds every one of them, sent or not (a budget stop leaves
    some unsent: they are pending)."""
    part = Plan()
    tracked = part.track(calls)
    js.send(tracked, desc, total)
    for _ in tracked:  # what the runner did not read (a stop, or nothing left to send)
        pass
    return part


def verify_data(cfg) -> dict[str, dict]:
    """judge.backend=verifier: prompt_id -> {"tests", "reference"} of the training and held-out prompts
    (rlaif.prompts.prompt_data; the two sets share no prompt), which single() puts in each verify call,
    and so in its key: a prompt whose tests changed is run again, the others are not."""
    from rlaif.prompts import prompt_args, prompt_data

    data = {}
    for heldout in (False, True):
        args = prompt_args(cfg, heldout)
        if args[0]:
            data.update(prompt_data(*args[:4]))
    return data


def judge_label(model: str, adapter: str | None) -> str:
    """How a report names the judging weights."""
    return f"{model} + adapter {adapter}" if adapter else model


def check_api_key(cfg) -> None:
    j = cfg.judge
    if j.backend == "openai":
        j.api_key()  # raises naming the variable when it is unset; api_key_env null needs none


def same_text(a: str, b: str) -> bool:
    """Identical up to whitespace: such pairs are ties and are never sent to a judge."""
    return " ".join(a.split()) == " ".join(b.split())


class JudgeSession:
    def __init__(self, cfg, ledger_path: str | Path, policy_after: int | None = None) -> None:
        """policy_after: under judge.model=policy, whose policy judges (judge_weights); ignored otherwise."""
        self.ledger, self._server = None, None
        if cfg.judge.serve and not cfg.judge.base_url:  # `vllm serve judge.model` for this session, judged through (rlaif/judge/serve.py)
            from rlaif.judge.serve import served, served_config

            self._server = served(cfg.judge, log=Path(ledger_path).parent / "judge-serve.log")
            cfg = cfg.model_copy(update={"judge": served_config(cfg.judge, self._server.__enter__())})
        try:
            check_api_key(cfg)
            self.cfg, self.j = cfg, cfg.judge
            self.spec = T.build_spec(self.j)
            self.model, self.adapter = judge_weights(cfg, policy_after)
            self.identity = judge_identity(self.j, self.model, self.adapter,
                                           cfg.sandbox if self.j.backend == "verifier" else None)
            self.data = verify_data(cfg) if self.j.backend == "verifier" else {}
            self.judge_id = judge_id(self.identity)
            self.ledger = Ledger(ledger_path)
            self.runner = Runner(cfg, self.ledger, self.model, self.spec, self.identity, self.judge_id)
            self.runner.adapter = self.adapter
        except BaseException:
            self.close()  # a server started above is stopped, not left to the watcher alone
            raise

    def __enter__(self) -> "JudgeSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:  # a local engine's GPU memory back before the next stage takes the card
            runner.close()
        if self.ledger is not None:
            self.ledger.close()
        server, self._server = self._server, None
        if server is not None:  # judge.serve: stop the server's whole process group (and wait for it)
            server.__exit__(None, None, None)

    @property
    def score_kind(self) -> str:
        """How one candidate is judged alone: a reward, a checklist, or a rubric score."""
        return score_kind(self.j)

    def _call(self, kind: str, pid: str, chat, first: str, second: str | None, ids: tuple, order=None,
              item: tuple | None = None, spec: T.Spec | None = None) -> Call:
        spec = spec or self.spec  # another spec: a principle's, for confirming a revision (rlaif/judge/pairs/revise.py)
        tokens = self.j.reply_tokens()
        if kind == "reward":
            key = call_key(self.identity, "reward", chat, first, None, None)
            return Call(key, pid, kind, ids[0], None, None, (), len(first) // 3, (), tuple(chat), first,
                        max_tokens=0)
        if kind == "verify":
            from rlaif.judge.runner import VERIFY_VERSION

            data = json.dumps(self.data.get(pid) or {"tests": None, "reference": None}, sort_keys=True)
            key = call_key(self.identity, VERIFY_VERSION, chat, first, data, None)
            return Call(key, pid, kind, ids[0], None, None, (), 0, (), tuple(chat), first, max_tokens=0,
                        data=data)
        question = item[1] if item else None
        msgs = spec.render(kind, chat, first, second, question)
        tags = T.fence_tag(chat, first, second, question) + spec.turn_tag(chat)  # keys of renderings that changed
        key = call_key(self.identity, spec.version(kind) + tags, chat, first,
                       second, order, question if kind == "checklist" else None)
        if kind == "checklist_writer":
            tokens = max(tokens, 256)
        return Call(key, pid, kind, ids[0], ids[1] if len(ids) > 1 else None, order, tuple(msgs),
                    sum(len(m["content"]) for m in msgs) // 3, spec.labels(kind) if kind != "checklist_writer"
                    else (), tuple(chat), None, item[0] if item else None, tokens, version=spec.version(kind))

    def pairwise(self, pid: str, chat, a: tuple, b: tuple, spec: T.Spec | None = None) -> list[Call]:
        """a, b = (candidate_id, text); both orders, so position bias shows and cancels."""
        return [self._call("pairwise", pid, chat, a[1], b[1], (a[0], b[0]), "ab", spec=spec),
                self._call("pairwise", pid, chat, b[1], a[1], (a[0], b[0]), "ba", spec=spec)]

    def single(self, pid: str, chat, cand: tuple, items: list[tuple] | None = None,
               spec: T.Spec | None = None) -> list[Call]:
        """One candidate judged alone: one score or reward call, or one call per checklist item."""
        kind = self.score_kind
        if kind != "checklist":
            return [self._call(kind, pid, chat, cand[1], None, (cand[0],), spec=spec)]
        items = items if items is not None else [(str(i), it.item) for i, it in enumerate(self.j.items())]
        return [self._call("checklist", pid, chat, cand[1], None, (cand[0],), item=it) for it in items]

    def checklists(self, chats: dict[str, list]) -> dict[str, list[tuple]]:
        """judge.checklist_from_prompt: a generated checklist per prompt (through the ledger), as
        (item_id, question) lists; the configured items come first. A prompt whose writer reply is
        invalid keeps the configured items only."""
        base = [(str(i), it.item) for i, it in enumerate(self.j.items())]
        if not self.j.checklist_from_prompt:
            return {pid: base for pid in chats}
        calls = [self._call("checklist_writer", pid, chat, "", None, (pid,)) for pid, chat in chats.items()]
        self.send(calls, "judge: write checklists")
        got = {r["prompt_id"]: json.loads(r["rationale"]) for r in
               self.results(calls).filter(pl.col("verdict") == "items").iter_rows(named=True)}
        return {pid: base + [(f"p{i}", q) for i, q in enumerate(got.get(pid, []))] for pid in chats}

    def text_call(self, kind: str, pid: str, chat, cand: tuple, spec: T.Spec, item: str, max_tokens: int,
                  critique: str | None = None) -> Call:
        """A critique or revision of cand = (candidate_id, text) under spec (a principle's, rlaif/judge/pairs/revise.py):
        a free-text reply. Its key: this session's identity (the critic's), the template version (the
        principle is its criteria), the prompt, the original, the critique (revisions) and the reply cap."""
        msgs = spec.render(kind, chat, cand[1], critique)
        tags = T.fence_tag(chat, cand[1], critique, item) + spec.turn_tag(chat)
        key = call_key(self.identity, spec.version(kind) + tags, chat, cand[1],
                       critique, None, f"max_tokens={max_tokens}")
        return Call(key, pid, kind, cand[0], None, None, tuple(msgs), sum(len(m["content"]) for m in msgs) // 3,
                    (), tuple(chat), None, item, max_tokens, version=spec.version(kind))

    def send(self, calls, desc: str, total: int | None = None) -> None:
        """Send what the ledger lacks; calls: a list, or an iterable made lazily (Plan.track) with its total."""
        self.runner.execute(calls, desc, total)

    def results(self, calls: "list[Call] | Plan") -> pl.DataFrame:
        """These calls joined with the ledger's finished results (by key), in the judgments schema."""
        parts = list(self._result_slices(calls))
        return pl.concat(parts) if parts else pl.DataFrame(schema=JUDGMENTS_SCHEMA)

    def write_results(self, calls: "list[Call] | Plan", path: Path) -> int:
        """results() written to `path` a slice at a time, so the texts (rationales, raw replies) of a
        round are never all in memory (issue 22, item 5). Same rows, same order."""
        return write_parquet_chunks(path, self._result_slices(calls), JUDGMENTS_SCHEMA)

    def _result_slices(self, calls: "list[Call] | Plan"):
        """The calls' ids, distinct and in ORDER, SLICE at a time, each slice joined with its ledger
        rows. The ids are held once (about 100 bytes a call) with an 8-byte sort index, never a sorted
        copy: the plan is what still grows with a round's calls."""
        ids = (calls if isinstance(calls, Plan) else Plan(calls)).frame().unique(["key", "a_id", "b_id"], keep="first",
                                                                                  maintain_order=True)
        order = ids.select(pl.arg_sort_by(ORDER, nulls_last=True)).to_series()
        for i in range(0, ids.height, SLICE):
            part = ids[order.slice(i, SLICE)]
            done = self.ledger.frame(part["key"].unique().to_list()).drop(PLAN_COLS[1:])
            yield part.join(done, on="key", how="inner").select(list(JUDGMENTS_SCHEMA)).sort(ORDER, nulls_last=True)

    def pending(self, calls: "list[Call] | Plan", judgments: pl.DataFrame | pl.LazyFrame) -> int:
        """Planned calls with no judgment; judgments: a frame, or a lazy scan whose keys are counted in
        a streaming pass instead of held."""
        ids = (calls if isinstance(calls, Plan) else Plan(calls)).frame()
        done = judgments.lazy().select(pl.col("key").n_unique()).collect(engine="streaming").item()
        return ids["key"].n_unique() - done


PLAN_COLS = ("key", "prompt_id", "kind", "a_id", "b_id", "order", "item")
ORDER = ["prompt_id", "key", "a_id", "b_id"]  # judgments' row order: total, so reruns write the same file
SLICE = 20000  # calls joined and written at a time by write_results


class Plan:
    """The calls a stage made, by identity only (key and ids) in columnar chunks: what results()
    joins the ledger on, about 100 bytes a call. Never the rendered messages: a call's messages go
    with it once sent, so a round's memory does not grow with its calls (issue 22, item 5)."""

    ROWS = 8192  # rows held as tuples before they become one columnar chunk

    def __init__(self, calls=()) -> None:
        self.frames: list[pl.DataFrame] = []
        self.rows: list[tuple] = []
        self += calls

    def track(self, calls):
        """Yield the calls, remembering each one's identity: js.send(plan.track(gen), desc, total)."""
        for c in calls:
            self.rows.append((c.key, c.prompt_id, c.kind, c.a_id, c.b_id, c.order, c.item))
            if len(self.rows) >= self.ROWS:
                self._flush()
            yield c

    def __iadd__(self, calls) -> "Plan":
        if isinstance(calls, Plan):
            self._flush()
            self.frames.append(calls.frame())
            return self
        for _ in self.track(calls):
            pass
        return self

    def _flush(self) -> None:
        if self.rows:
            self.frames.append(pl.DataFrame(self.rows, schema={k: pl.String for k in PLAN_COLS}, orient="row"))
            self.rows = []

    def frame(self) -> pl.DataFrame:
        """Every call's identity as one frame; the chunks become that frame (kept once, not twice)."""
        self._flush()
        if len(self.frames) > 1:
            self.frames = [pl.concat(self.frames)]
        return self.frames[0] if self.frames else pl.DataFrame(schema={k: pl.String for k in PLAN_COLS})

    def __len__(self) -> int:
        self._flush()
        return sum(f.height for f in self.frames)
