"""What each stage's output was made from, so a finished stage can be told stale.

    made_from(cfg, k, "judge")  -> {"id": "9a0c11d2e4f1", "parts": {"judge.rubric": "1e202f47", ...}}
    state(cfg, k, "train")      -> ("stale", "train.beta changed: 3f1a09c2 -> 77b0e1d5")

A stage's fingerprint is a hash over named parts, each a short hash of one thing that can change
its output: a config key the stage reads (resolved value; a key naming a file or folder enters by
its content), the model by content (rlaif.models.folder_id), the shipped templates, the stage's
code version, and the fingerprints of the stages it consumes (their *current* fingerprints, so a
change upstream makes everything downstream stale too). A stage writes its fingerprint into its
manifest when it finishes (`made_from`), and into round-K/stamps/STAGE.json when it starts, so an
unfinished stage started under another config is told apart from one to resume.

Settings that cannot change a stage's output are left out (NOT_OUTPUT): how work is split and
sent, budgets, prices, progress and checkpoint cadence. They can be changed on a finished run
without redoing anything. Parts hold hashes only: no key, URL credential or prompt text is stored.

The loop's stages are generate, judge, filter, train, evaluate (`rlaif run` runs the filter as the
end of its judge step).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from pathlib import Path

from rlaif.errors import UserError
from rlaif.io import json_object, stable_id, write_json

STAGES = ("generate", "judge", "filter", "train", "evaluate")
# The file each stage writes last: its existence means the stage finished.
MARKER = {"generate": "candidates.manifest.json", "judge": "judge.manifest.json", "filter": "pairs.card.json",
          "train": "train/train.manifest.json", "evaluate": "eval/eval.json"}
# What a stale stage's rerun moves aside (never the judge ledger: unchanged calls stay paid for).
OUTPUTS = {"generate": ["candidates", "candidates.manifest.json"],
           "judge": ["judgments.parquet", "judge-report.json", "judge.manifest.json", "revisions.parquet",
                     "meta-judgments.parquet", "meta-pairs.parquet"],
           "filter": ["pairs.parquet", "pairs.card.json"],
           "train": ["train"], "evaluate": ["eval"]}
# Bump when a stage's code changes what it writes for the same inputs.
CODE_VERSION = {"generate": 3, "judge": 1, "filter": 1, "train": 1, "evaluate": 1}
NOT_OUTPUT = {
    # how the work is split, how much memory it may take, and the model/adapter (they enter by content)
    "generate": {"worker", "data_parallel_size", "gpu_memory_utilization", "max_lora_rank", "model", "adapter"},
    # how calls are sent, paced, priced and capped; the ledger's place; the model and endpoint enter
    # as the judge's identity (rlaif/judge/identity.py), the key's variable name never matters
    "judge": {"concurrency", "batch_size", "timeout_s", "max_retries", "max_backoff_s", "max_cost_usd", "max_calls",
              "prices", "ledger", "rpm", "tpm", "mode_api", "batch_discount", "batch_max_requests", "batch_max_bytes", "batch_max_enqueued_tokens",
              "batch_poll_s", "batch_max_poll_s", "batch_completion_window", "batch_fallback_live", "api_key_env",
              "min_agreement", "model", "base_url", "identity", "processes", "gpu_memory_utilization",
              "serve_command"},
    "train": {"save_steps", "report_to"},
}
# Keys whose value may name a file or folder: it enters by content, not by its path.
FILE_KEYS = {"prompts", "judge.rubric", "judge.template", "revise.critique_template", "revise.revision_template",
             "evaluate.prompts", "evaluate.pairs", "generate.chat_template"}


def _h(obj) -> str:
    return stable_id(obj, n=8)


@functools.lru_cache(maxsize=64)
def _content(path: str, mtime_ns: int, size: int) -> str:
    p = Path(path)
    if p.is_dir():
        from rlaif.models import folder_id

        return folder_id(p)[:8]
    return hashlib.sha256(p.read_bytes()).hexdigest()[:8]


def _value(key: str, value) -> str:
    """A key's part: its value's hash, or its file's content hash when the value names a file/folder."""
    if key in FILE_KEYS and isinstance(value, str) and "\n" not in value and len(value) < 4096:
        p = Path(value).expanduser()
        if p.is_dir():  # a folder of prompt shards: a shard rewritten in place leaves the folder's mtime as it was
            return _folder(str(p.resolve()))
        if p.exists():
            st = p.stat()
            return _content(str(p.resolve()), st.st_mtime_ns, st.st_size)
    return _h(value)


# Keys added after runs existed (issue 23): at their default they leave a fingerprint as it was, so
# upgrading rlaif does not redo a finished stage that the new key would not have changed.
QUIET_DEFAULTS = {"prompts_columns": {}, "prompts_dedup": "error",
                  "evaluate.prompts_columns": {}, "evaluate.prompts_dedup": "error",
                  "judge.max_history_tokens": 2048,
                  # issue 24: the verifier's keys, and a check's new kinds left unset
                  "judge.checks": {}, "judge.tiebreak": None}
CHECK_QUIET = {"tests": False, "reference": None}  # inside each check of evaluate.checks / judge.checks


def _quiet(key: str, value) -> bool:
    return key in QUIET_DEFAULTS and value == QUIET_DEFAULTS[key]


def _checks(value: dict) -> dict:
    """A checks mapping with each check's new kinds dropped where unset: older checks keep their hash."""
    return {name: {k: v for k, v in spec.items() if not (k in CHECK_QUIET and v == CHECK_QUIET[k])}
            for name, spec in value.items()}


def _keys(section, prefix: str, skip: set[str] = frozenset()) -> dict[str, str]:
    data = section.model_dump(mode="json", by_alias=True)
    return {f"{prefix}.{k}": _value(f"{prefix}.{k}", _checks(v) if k == "checks" else v) for k, v in data.items()
            if k not in skip | {"tiebreak"} and not _quiet(f"{prefix}.{k}", v)}


def _sandbox(cfg) -> str:
    from rlaif.judge.identity import sandbox_identity

    return _h(sandbox_identity(cfg.sandbox))


def _model(name: str) -> str:
    from rlaif.models import DEMO_NAME, resolve_model

    if name == "demo":  # built the same way from a pinned package: its name says what it holds (never built here)
        return _h(["demo", DEMO_NAME])
    try:
        path = resolve_model(name)
    except UserError:  # not here (a judge stage on a machine without the SFT model): it enters by name
        return _h(["not found", name])
    st = Path(path).stat()
    return _content(path, st.st_mtime_ns, st.st_size) if Path(path).is_file() else _folder(path)


def _folder(path: str) -> str:
    """A folder by content; cached per process while no file in it changed (an adapter retrained in
    place by a stage this process waited for is read again)."""
    files = [f for f in Path(path).rglob("*") if f.is_file()]
    return _folder_id(path, max((f.stat().st_mtime_ns for f in files), default=0), len(files))


@functools.lru_cache(maxsize=16)
def _folder_id(path: str, newest_ns: int, count: int) -> str:
    from rlaif.models import folder_id

    return folder_id(path)[:8]


@functools.lru_cache(maxsize=1)
def _templates() -> str:
    """The shipped judge templates' content: a new release's template makes judged stages stale."""
    folder = Path(__file__).parent / "judge" / "templates"
    return _h({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.yaml"))})


def _judge_parts(cfg) -> dict[str, str]:
    """What a judge verdict depends on: used by the judge stage and by evaluate, which judges too."""
    from rlaif.judge.identity import endpoint

    j = cfg.judge
    parts = _keys(j, "judge", NOT_OUTPUT["judge"])
    if j.backend == "openai":
        parts["judge.model"] = _h(j.model)
        parts["judge.endpoint"] = _h(j.identity or endpoint(j.base_url))
    elif j.identity:
        parts["judge.model"] = _h(j.identity)
    else:  # judge.model=policy: the SFT model here; the round's adapter enters in _made_from (policy_after)
        parts["judge.model"] = _model(cfg.model if j.model in (None, "policy") else j.model)
    parts["judge.templates"] = _templates()
    if j.backend == "verifier":  # where and under which limits candidate code runs; the LLM that breaks ties
        parts["sandbox"] = _sandbox(cfg)
        if j.tiebreak is not None:
            parts["judge.tiebreak"] = _h(_judge_parts(cfg.model_copy(update={"judge": j.tiebreak})))
    return parts


def _policy_judge(parts: dict, cfg, after: int, memo: dict) -> None:
    """judge.model=policy: the policy after round `after` judges (rlaif.judge.session.judge_weights), so its
    adapter's training is upstream: a retrained round k-1 makes round k's judgments stale."""
    if cfg.judge.model == "policy" and after >= 0:
        from rlaif.train.policy import adapter_dir

        adapter = adapter_dir(cfg, after)  # by content, as generation's: one retrained in place differs
        parts["judge.adapter"] = _folder(str(adapter)) if adapter.is_dir() else _h("not trained")
        _upstream(parts, cfg, after, "train", memo)


def _upstream(parts: dict, cfg, k: int, stage: str, memo: dict) -> None:
    parts[f"round {k} {stage}"] = _made_from(cfg, k, stage, memo)["id"][:8]


def _made_from(cfg, k: int, stage: str, memo: dict) -> dict:
    if (k, stage) in memo:
        return memo[(k, stage)]
    parts: dict[str, str] = {"code": str(CODE_VERSION[stage]), "round": str(k)}
    g = cfg.generate
    if stage == "generate":
        skip = NOT_OUTPUT["generate"] | ({"batch_size"} if g.backend == "vllm" else set())
        parts.update(_keys(g, "generate", skip))
        parts.update(seed=_h(cfg.seed), prompts=_value("prompts", cfg.prompts), prompts_split=_h(cfg.prompts_split))
        parts.update({k: _h(v) for k, v in (("prompts_columns", cfg.prompts_columns),
                                            ("prompts_dedup", cfg.prompts_dedup)) if not _quiet(k, v)})
        if k == 0:
            parts["generate.model"] = _model(g.model or cfg.model)
        else:  # the loop samples round k from round k-1's policy (its base plus its adapter)
            from rlaif.train.policy import adapter_dir

            parts["model"] = _model(cfg.model)
            parts["train.reference"] = _h(cfg.train.reference)
            adapter = Path(g.adapter or adapter_dir(cfg, k - 1))  # by content: one retrained in place differs
            parts["generate.adapter"] = _folder(str(adapter)) if adapter.is_dir() else _h("not trained")
            _upstream(parts, cfg, k - 1, "train", memo)
    elif stage == "judge":
        parts.update(_judge_parts(cfg))
        parts.update(_keys(cfg.pairs, "pairs"))
        if cfg.pairs.source != "rank":
            parts.update(_keys(cfg.revise, "revise", {"critic"}))
            if cfg.revise.critic:
                parts["revise.critic"] = _h(_judge_parts(cfg.model_copy(update={"judge": cfg.revise.critic})))
        _policy_judge(parts, cfg, k - 1, memo)
        _upstream(parts, cfg, k, "generate", memo)
    elif stage == "filter":
        parts.update(_keys(cfg.filter, "filter"))
        parts["judge.checklist"] = _h(cfg.judge.model_dump(mode="json")["checklist"])  # the filter's weights
        _upstream(parts, cfg, k, "judge", memo)
    elif stage == "train":
        parts.update(_keys(cfg.train, "train", NOT_OUTPUT["train"]))
        parts.update(seed=_h(cfg.seed), model=_model(cfg.model), accumulate_pairs=_h(cfg.run.accumulate_pairs))
        for r in (range(k + 1) if cfg.run.accumulate_pairs else [k]):
            _upstream(parts, cfg, r, "filter", memo)
        if k > 0 and cfg.train.reference == "previous":
            _upstream(parts, cfg, k - 1, "train", memo)
    elif stage == "evaluate":
        parts.update(_keys(cfg.evaluate, "evaluate"))
        if any(c.tests for c in cfg.evaluate.checks.values()):
            parts["sandbox"] = _sandbox(cfg)
        if cfg.judge.backend == "verifier":  # v2: its scores decide the matchups (v1 left every one out)
            parts["evaluate.verify_outcomes"] = _h("v2")
        parts.update(_keys(g, "generate", NOT_OUTPUT["generate"] | {"n", "shard_size", "max_prompts"}))
        parts.update(_judge_parts(cfg))
        parts.update(seed=_h(cfg.seed), model=_model(cfg.model))
        _upstream(parts, cfg, k, "train", memo)  # evaluate.judge_policy: this train is also the judge's
        if k > 0 and cfg.evaluate.vs_previous:
            _upstream(parts, cfg, k - 1, "train", memo)
    out = {"id": stable_id(parts, n=12), "parts": parts}
    memo[(k, stage)] = out
    return out


def made_from(cfg, k: int | None = None, stage: str = "generate", memo: dict | None = None) -> dict:
    """{"id", "parts"}: what round k's `stage` output is made from under this config."""
    return _made_from(cfg, cfg.round if k is None else k, stage, {} if memo is None else memo)


def _read(path: Path) -> dict | None:
    return json_object(path) or None


def recorded(cfg, k: int, stage: str) -> dict | None:
    """What round k's `stage` outputs were made from: its manifest's made_from, else the stamp its
    run wrote when it started (a kill between the manifest and the seal); None: made by an older rlaif."""
    d = _read(cfg.round_dir(k) / MARKER[stage])
    return (d or {}).get("made_from") or _read(cfg.round_dir(k) / "stamps" / f"{stage}.json")


def seal(cfg, stage: str) -> None:
    """Copy the stamp into the finished stage's manifest, where a reader of the run looks for it."""
    path, st = cfg.round_dir() / MARKER[stage], _read(cfg.round_dir() / "stamps" / f"{stage}.json")
    d = _read(path) if path.exists() else None
    if d is not None and st and d.get("made_from") != st:
        write_json(path, {**d, "made_from": st})


def why(old: dict, new: dict) -> str:
    """'judge.rubric changed: 1e202f47 -> 9a0c11d2; ...', upstream stages last, at most 4 named."""
    a, b = old.get("parts", {}), new["parts"]
    keys = sorted(set(a) | set(b), key=lambda x: (x.startswith("round "), x))
    out = []
    for key in keys:
        if a.get(key) == b.get(key):
            continue
        if key.startswith("round "):
            out.append(f"{key} changed")
        elif key not in a:
            out.append(f"{key} new")
        elif key not in b:
            out.append(f"{key} gone")
        else:
            out.append(f"{key} changed: {a[key]} -> {b[key]}")
    more = f"; and {len(out) - 4} more" if len(out) > 4 else ""
    return "; ".join(out[:4]) + more if out else "fingerprint changed"


def state(cfg, k: int, stage: str, memo: dict | None = None) -> tuple[str, str]:
    """("done" | "stale" | "started" | "missing", why). started: outputs of an unfinished run exist
    (resumable when its stamp matches this config; stale otherwise)."""
    rdir = cfg.round_dir(k)
    memo = {} if memo is None else memo
    if (rdir / MARKER[stage]).exists():
        rec = recorded(cfg, k, stage)
        if rec is None:
            return "done", "no fingerprint recorded (made by an older rlaif): kept as it is"
        cur = made_from(cfg, k, stage, memo)
        return ("done", "") if rec.get("id") == cur["id"] else ("stale", why(rec, cur))
    stamp = _read(rdir / "stamps" / f"{stage}.json")
    started = any((rdir / p).exists() for p in OUTPUTS[stage])
    if not started:
        return "missing", ""
    if stamp:
        cur = made_from(cfg, k, stage, memo)
        if stamp.get("id") != cur["id"]:
            return "stale", "unfinished, started under another config: " + why(stamp, cur)
    return "started", ""


def stamp(cfg, stage: str) -> dict:
    """Record what this run of `stage` is made from before it writes anything; returns made_from."""
    m = made_from(cfg, cfg.round, stage)
    write_json(cfg.round_dir() / "stamps" / f"{stage}.json", m)
    return m


def move_aside(cfg, k: int, stage: str) -> Path | None:
    """Move a stale stage's outputs to round-K/stale/STAGE-<time>/ (kept, never mixed with fresh ones).
    The judge stage ends by running the filter, so a stale judge takes the filter's outputs along
    (to stale/filter-<time>/). Returns the stage's own folder there, or None when it had no outputs."""
    rdir = cfg.round_dir(k)
    if stage == "judge":
        _move_outputs(rdir, "filter")
    return _move_outputs(rdir, stage)


def _move_outputs(rdir: Path, stage: str) -> Path | None:
    present = [p for p in OUTPUTS[stage] if (rdir / p).exists()]
    if not present:
        return None
    dest = rdir / "stale" / f"{stage}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    dest.mkdir(parents=True)
    for p in present:
        os.replace(rdir / p, dest / p)  # one rename each, same filesystem
    (rdir / "stamps" / f"{stage}.json").unlink(missing_ok=True)
    return dest


def downstream(cfg, k: int, stage: str, stages: list[str]) -> str:
    """'filter, train, evaluate, rounds 1-2': what a rerun of round k's `stage` makes stale too."""
    later = [s for s in stages[stages.index(stage) + 1:]]
    rest = f"round {k + 1}" if k + 1 == cfg.rounds - 1 else f"rounds {k + 1}-{cfg.rounds - 1}"
    return ", ".join(later + ([rest] if k + 1 < cfg.rounds else [])) or "none"


def link_tree(src: Path, dst: Path) -> None:
    """dst as a copy of src: files hard-linked where they are replaced by rename only, SQLite files
    (written in place) copied. Never moves or changes src."""
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            link_tree(child, dst / child.name)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(("-wal", "-shm", "-journal")) or src.name.startswith(".lock"):
        return  # a SQLite database is copied whole below (its WAL included); locks belong to their run
    if src.suffix == ".sqlite" and src.with_name(src.name + "-wal").exists():
        import sqlite3  # rows may still be in the WAL: SQLite's backup copies a consistent snapshot

        a, b = sqlite3.connect(f"file:{src}?mode=ro", uri=True), sqlite3.connect(dst)
        try:
            a.backup(b)  # a consistent snapshot, rows still in the WAL included
        finally:
            a.close()
            b.close()
        return
    if src.suffix == ".sqlite":  # checkpointed (no WAL beside it): the file is the whole database
        shutil.copy2(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fork(cfg, base: Path, stages: list[str]) -> list[str]:
    """Bring the base run's finished stages whose fingerprint matches this config into cfg.run_dir,
    round by round in loop order; returns 'round K stage' for each one reused."""
    from rlaif.config import load_config

    base = Path(base)
    if not (base / "config.yaml").exists():
        raise UserError(f"--from {base}: not a run folder (no config.yaml)")
    if base.resolve() == Path(cfg.run_dir).resolve():
        raise UserError(f"--from {base}: that is this run's own folder; give the new run another run_dir")
    bcfg = load_config(base / "config.yaml", import_checks=False)
    memo, reused = {}, []
    for k in range(min(cfg.rounds, bcfg.rounds)):
        src, dst = bcfg.round_dir(k), cfg.round_dir(k)
        for stage in stages:
            if (dst / MARKER[stage]).exists():
                continue  # the new run has its own already
            rec = recorded(bcfg, k, stage)
            if not (src / MARKER[stage]).exists() or rec is None or rec.get("id") != made_from(cfg, k, stage, memo)["id"]:
                continue
            for p in OUTPUTS[stage]:
                if (src / p).exists():
                    link_tree(src / p, dst / p)
            if (src / "stamps" / f"{stage}.json").exists():
                link_tree(src / "stamps" / f"{stage}.json", dst / "stamps" / f"{stage}.json")
            if stage == "generate" and (src / "judge-ledger.sqlite").exists() and not (dst / "judge-ledger.sqlite").exists():
                link_tree(src / "judge-ledger.sqlite", dst / "judge-ledger.sqlite")  # paid calls, copied
            reused.append(f"round {k} {stage}")
    return reused
