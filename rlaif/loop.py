"""`rlaif run`: rounds of generate -> judge (+filter) -> train -> evaluate, each stage in its own
process so GPU memory is released between vLLM and training; `rlaif status`: where a run stands.

After each round's evaluation RUN_DIR/report.md is rebuilt, and with run.stop_on_length_hacking
the run stops when answers grew by more than run.max_length_growth while the LC win rate did not
rise. Without evaluate.prompts there is no held-out set, so rounds end after train (said once).

A stage whose outputs are up to date is skipped; one made from another config (rlaif/fingerprint.py:
a key it reads, a file it consumed, an upstream stage changed) is stale: its outputs are moved aside
and it reruns, with everything downstream of it, saying why. An unfinished one resumes from its
shards, ledger or checkpoint. `--from BASE` forks: the new run starts from BASE's stages that are
still valid under the new config (linked or copied, never moved). Round k > 0 samples from the SFT model plus round k-1's adapter (or, with
train.reference=previous, from the merged previous policy plus the adapter): no merge is needed
for sampling.

Multi-GPU training: with RLAIF_TRAIN_LAUNCHER set (e.g. "accelerate launch --config_file
configs/accelerate/fsdp.yaml"), the train stage runs as `$RLAIF_TRAIN_LAUNCHER -m rlaif train ...`
instead of `python -m rlaif train ...`. generate.data_parallel_size works as it does alone.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from rlaif.config import RunConfig, load_config
from rlaif.credentials import SECRETS_ENV, secret_urls
from rlaif import fingerprint as FP
from rlaif.errors import UserError
from rlaif.procs import run_child

STAGES = ["generate", "judge", "train", "evaluate"]
# Each stage's own marker, written last. The loop's judge step is judge + filter, so it is done when
# the judge's manifest and the filter's card both exist: a card alone can come from the partial
# judgments of a budget stop or a consistency failure (issue 11, item 1).
DONE = {"generate": ["candidates.manifest.json"], "judge": ["judge.manifest.json", "pairs.card.json"],
        "train": ["train/train.manifest.json"], "evaluate": ["eval/eval.json"]}


def stages(cfg: RunConfig) -> list[str]:
    return STAGES if cfg.evaluate.prompts else STAGES[:-1]


class StageFailed(UserError):
    def __init__(self, stage: str, k: int, code: int) -> None:
        super().__init__(f"run: {stage} failed in round {k} (exit {code}); fix the cause and rerun "
                         "`rlaif run`: finished work is kept and resumed")
        self.exit_code = code


def done(cfg: RunConfig, k: int, stage: str) -> bool:
    return all((cfg.round_dir(k) / f).exists() for f in DONE[stage])


def step(cfg: RunConfig, k: int, stage: str, memo: dict) -> tuple[str, str, str]:
    """(state, why, command) of round k's loop step: the judge step is the judge then the filter, so
    a finished judge under a stale filter reruns the filter alone (no judge call)."""
    st, why = FP.state(cfg, k, stage, memo)
    if stage == "judge" and st == "done":
        fst, fwhy = FP.state(cfg, k, "filter", memo)
        if fst != "done":
            return fst, fwhy, "filter"
    return st, why, stage


def stage_overrides(cfg: RunConfig, k: int, stage: str) -> list[str]:
    """The run's config, at round k: nothing else. A later round's generate finds last round's policy
    itself (rlaif.train.policy.sampling_policy), so every process fingerprints one config."""
    return [f"round={k}"]


def stage_command(stage: str, config: Path, overrides: list[str]) -> list[str]:
    """`python -m rlaif STAGE ...`; the train stage under $RLAIF_TRAIN_LAUNCHER when it is set."""
    args = ["-m", "rlaif", stage, "--config", str(config), *overrides]
    launcher = os.environ.get("RLAIF_TRAIN_LAUNCHER", "").strip()
    if stage == "train" and launcher:
        return [*shlex.split(launcher), *args]
    return [sys.executable, *args]


def _eval(cfg: RunConfig, k: int) -> dict:
    """Round k's eval.json. Unreadable is an error, not {}: {} would silently turn the
    length-hacking stop off (issue 11, item 8)."""
    path = cfg.round_dir(k) / DONE["evaluate"][0]
    try:
        e = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({str(err).splitlines()[0][:100]}); delete it and rerun to "
                        f"evaluate round {k} again") from None
    if not isinstance(e, dict):
        raise UserError(f"{path}: expected a JSON object; delete it and rerun to evaluate round {k} again")
    return e


def length_stop(cfg: RunConfig, k: int) -> str | None:
    """The early-stop rule after round k (k >= 1), from the two rounds' eval.json."""
    if k == 0 or not cfg.run.stop_on_length_hacking or not cfg.evaluate.prompts:
        return None
    from rlaif.evaluate.metrics import length_hacking

    return length_hacking(_eval(cfg, k - 1), _eval(cfg, k), cfg.run.max_length_growth)


def report(cfg: RunConfig) -> Path:
    from rlaif.evaluate.report import write_report

    return write_report(Path(cfg.run_dir), cfg.run.max_length_growth)


def run(cfg: RunConfig, from_run: str | None = None) -> Path:
    config = Path(cfg.run_dir) / "config.yaml"  # written by the CLI: the resolved config, secrets masked
    if cfg.generate.worker:
        raise UserError(f"generate.worker={cfg.generate.worker}: a worker samples only part of a round; use it with "
                        "`rlaif generate` (one per machine), then `rlaif run` once every shard is written")
    todo = stages(cfg)
    # config.yaml masks credentials in a base_url; the stages get the real URLs as they get the API key
    secrets = secret_urls(cfg)
    env = {**os.environ, "RLAIF_RUN_CHILD": "1", **({SECRETS_ENV: json.dumps(secrets)} if secrets else {})}
    if not cfg.evaluate.prompts:
        print("run: evaluate.prompts is not set: no held-out prompts, so rounds are not evaluated "
              "(no win rate, no length-hacking stop)")
    if from_run:
        steps = [s for s in FP.STAGES if s != "evaluate" or cfg.evaluate.prompts]
        reused = FP.fork(cfg, Path(from_run), steps)
        print(f"run: forked from {from_run}: reused " + (", ".join(reused) if reused else "nothing (no stage "
              "of it is valid under this config)"))
    ran, memo = False, {}
    for k in range(cfg.rounds):
        if k > 0 and (msg := length_stop(cfg, k - 1)):
            return _stopped(cfg, k - 1, msg)
        states = [step(cfg, k, s, memo) for s in todo]
        if all(st == "done" for st, _, _ in states):
            print(f"run: round {k}: done, skipped")
            continue
        ran = True
        for stage in todo:
            st, why, cmd = step(cfg, k, stage, memo)  # again: an earlier step of this round may have changed it
            if st == "done":
                print(f"run: round {k} {stage}: done, skipped")
                continue
            if st == "stale":
                order = [s for s in FP.STAGES if s in todo or s == "filter"]
                print(f"run: round {k} {cmd}: stale ({why}); rerunning; downstream: {FP.downstream(cfg, k, cmd, order)}",
                      flush=True)
                FP.move_aside(cfg, k, cmd)
            print(f"run: round {k} {cmd} ...", flush=True)
            code = run_child(stage_command(cmd, config, stage_overrides(cfg, k, cmd)), env)  # dies with this process
            if code != 0:
                raise StageFailed(cmd, k, code)
        print(f"run: round {k} done; report -> {report(cfg)}", flush=True)
    if (msg := length_stop(cfg, cfg.rounds - 1)):
        return _stopped(cfg, cfg.rounds - 1, msg)
    print(f"run: all {cfg.rounds} rounds done{'' if ran else ' already; nothing to do'}; report -> {report(cfg)}")
    return Path(cfg.run_dir)


def _stopped(cfg: RunConfig, k: int, msg: str) -> Path:
    report(cfg)
    print(f"run: stopped after round {k}: {msg}. The report ({Path(cfg.run_dir) / 'report.md'}) has the "
          "figures; to go on anyway, rerun with run.stop_on_length_hacking=false")
    return Path(cfg.run_dir)


def _cell(cfg: RunConfig, k: int, stage: str, memo: dict, notes: list[str]) -> str:
    """One status cell: 'stale' (why goes under the table) when the outputs were made from another
    config, else what is there: done with its figures, partial, or missing."""
    if stage != "evaluate" or cfg.evaluate.prompts:
        st, why, cmd = step(cfg, k, stage, memo)
        if st == "stale":
            notes.append(f"round {k} {cmd}: stale: {why}")
            return f"stale ({cmd}, note {len(notes)})" if cmd != stage else f"stale (note {len(notes)})"
    return _figures(cfg, k, stage)


def _figures(cfg: RunConfig, k: int, stage: str) -> str:
    rdir = cfg.round_dir(k)
    if stage == "generate":
        if done(cfg, k, stage):
            m = _json(rdir / DONE[stage][0])
            return f"done: {m['counts']['candidates']} cand."
        plan = rdir / "candidates" / "plan.json"
        if plan.exists():
            total = len(_json(plan)["shards"])
            return f"partial: {len(list((rdir / 'candidates').glob('part-*.parquet')))}/{total} shards"
    elif stage == "judge":
        if done(cfg, k, stage):
            card = _json(rdir / "pairs.card.json")
            report = _json(rdir / "judge-report.json")
            pc = report.get("position_consistency")
            return f"done: {card['kept']} pairs" + (f", cons {pc:.2f}" if pc is not None else "")
        if (rdir / "judge-report.json").exists():  # a stopped judge: budget, no reply, or unreliable
            pending = _json(rdir / "judge-report.json").get("pending_calls")
            return f"partial: {pending} calls pending" if pending else "partial: judge not finished"
        if (rdir / "judge-ledger.sqlite").exists():
            return "partial: ledger"
    elif stage == "train":
        if done(cfg, k, stage):
            m = _json(rdir / DONE[stage][0])
            loss = m["final"].get("loss")
            return f"done: {m['steps']} steps" + (f", loss {loss:.3f}" if loss is not None else "")
        ckpts = sorted((rdir / "train").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if ckpts:
            return f"partial: {ckpts[-1].name}"
    elif stage == "evaluate":
        if not cfg.evaluate.prompts:
            return "off (no evaluate.prompts)"
        if done(cfg, k, stage):
            e = _eval(cfg, k)
            pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
            return f"done: win {pct(e.get('win_rate'))}, LC {pct(e.get('lc_win_rate'))}"
        if (rdir / "eval" / "answers").exists():
            return "partial: answers"
    return "missing"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({str(e).splitlines()[0][:100]})") from None


def status(run_dir: str, config: str | None = None, overrides: list[str] = ()) -> int:
    """Rounds x stages of RUN_DIR. Staleness is judged against RUN_DIR/config.yaml (the config the run
    last started with), or against CONFIG + overrides when given: what `rlaif run CONFIG` would redo."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    # reading a run never imports the user's check functions
    cfg = load_config(config or path, [*overrides, f"run_dir={run_dir}"] if config else overrides, import_checks=False)
    memo: dict = {}
    notes: list[str] = []
    rows = [[f"round {k}"] + [_cell(cfg, k, s, memo, notes) for s in STAGES] for k in range(cfg.rounds)]
    header = ["", *STAGES]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for i, note in enumerate(notes, 1):
        print(f"note {i}: {note}")
    if notes:
        print(f"`rlaif run {config or path}` reruns the stale stages and everything downstream of them")
    return 0
