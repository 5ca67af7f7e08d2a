"""`rlaif run`: rounds of generate -> judge (+filter) -> train -> evaluate, each stage in its own
process so GPU memory is released between vLLM and training; `rlaif status`: where a run stands.

After each round's evaluation RUN_DIR/report.md is rebuilt, and with run.stop_on_length_hacking
the run stops when answers grew by more than run.max_length_growth while the LC win rate did not
rise. Without evaluate.prompts there is no held-out set, so rounds end after train (said once).

A stage whose manifest exists is skipped; an unfinished one resumes from its shards, ledger or
checkpoint. Round k > 0 samples from the SFT model plus round k-1's adapter (or, with
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
from rlaif.errors import UserError
from rlaif.procs import run_child
from rlaif.train.policy import adapter_dir, policy_base

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


def stage_overrides(cfg: RunConfig, k: int, stage: str) -> list[str]:
    out = [f"round={k}"]
    if stage == "generate" and k > 0:  # sample from last round's policy: its base plus its adapter
        out += [f"generate.model={policy_base(cfg, k - 1)}", f"generate.adapter={adapter_dir(cfg, k - 1).resolve()}"]
    return out


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


def run(cfg: RunConfig) -> Path:
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
    ran = False
    for k in range(cfg.rounds):
        if k > 0 and (msg := length_stop(cfg, k - 1)):
            return _stopped(cfg, k - 1, msg)
        if all(done(cfg, k, s) for s in todo):
            print(f"run: round {k}: done, skipped")
            continue
        ran = True
        for stage in todo:
            if done(cfg, k, stage):
                print(f"run: round {k} {stage}: done, skipped")
                continue
            print(f"run: round {k} {stage} ...", flush=True)
            cmd = stage_command(stage, config, stage_overrides(cfg, k, stage))
            code = run_child(cmd, env)  # dies with this process
            if code != 0:
                raise StageFailed(stage, k, code)
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


def _cell(cfg: RunConfig, k: int, stage: str) -> str:
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


def status(run_dir: str) -> int:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(path, import_checks=False)  # reading a run never imports the user's check functions
    rows = [[f"round {k}"] + [_cell(cfg, k, s) for s in STAGES] for k in range(cfg.rounds)]
    header = ["", *STAGES]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
