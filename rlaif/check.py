"""`rlaif check`: every problem a run would hit, found in seconds and without spending anything.

    rlaif check configs/gpu-8b.yaml [key.sub=value ...] [--stage judge] [--json]

Each stage command and `rlaif run` call `preflight` for the stages they run, before anything is
moved aside, loaded or paid for: a missing key, file, price or package fails in the first second,
not after hours of generation or a 24-hour batch window (issue 21). Every problem is one line naming
the key; all of them are printed at once. The checks reuse the functions the stages themselves
call, so a check and the stage it protects say the same words.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from rlaif.errors import UserError

# vLLM 0.32's accepted LoRA ranks (vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, ... 512])
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
INSTALL = {"vllm": "pip install 'rlaif[vllm]' (on the GPU machine; CUDA torch comes with it)",
           "openai": "pip install openai", "trl": "pip install trl", "peft": "pip install peft",
           "transformers": "pip install transformers"}
ENDPOINT_TIMEOUT_S = 5.0


class Report:
    def __init__(self) -> None:
        self.problems: list[dict] = []
        self.warnings: list[str] = []
        self.info: dict = {}

    def problem(self, check: str, key: str, message: str) -> None:
        if not any(p["message"] == message for p in self.problems):
            self.problems.append({"check": check, "key": key, "message": message})

    def guard(self, check: str, key: str, fn, *args):
        """fn(*args), its UserError recorded as this check's line (the stage's own words)."""
        try:
            return fn(*args)
        except UserError as e:  # the stage's own words, led by the key when they do not name it
            self.problem(check, key, str(e) if str(e).startswith(key) else f"{key}: {e}")
        return None

    def lines(self) -> list[str]:
        return [p["message"] for p in self.problems]  # each names its key or file (the stage's own words)


def judges_in_use(cfg, stages: list[str]) -> list[tuple[str, object]]:
    """(key prefix, JudgeConfig) of every judge the stages call: the judge, and revise's critic."""
    out = []
    if set(stages) & {"judge", "evaluate", "calibrate"}:
        out.append(("judge", cfg.judge))
        if cfg.judge.tiebreak is not None:  # judge.backend=verifier's LLM for candidates the checks score alike
            out.append(("judge.tiebreak", cfg.judge.tiebreak))
    if "judge" in stages and cfg.pairs.source != "rank" and cfg.revise.critic is not None:
        out.append(("revise.critic", cfg.revise.critic))
    return out


# ------------------------------------------------------------------ keys, prices, endpoint, margins

def check_keys_prices(cfg, stages: list[str], r: Report) -> None:
    for prefix, j in judges_in_use(cfg, stages):
        if j.backend != "openai":
            continue
        if not j.model:
            r.problem("model", f"{prefix}.model", f"{prefix}.model: required with backend openai (the endpoint's model name)")
        elif not j.serve:  # judge.serve: rlaif's own server, started with no key (rlaif/judge/serve.py)
            r.guard("keys", f"{prefix}.api_key_env", j.api_key)  # the stage's own lookup and words
        capped = j.max_cost_usd is not None or (prefix != "judge" and cfg.judge.max_cost_usd is not None)
        if capped and j.model and j.model not in j.prices:
            r.problem("prices", f"{prefix}.prices", f"{prefix}.prices: no price for {j.model!r}, so "
                      f"judge.max_cost_usd cannot be enforced (add {prefix}.prices.{j.model}=[input, output] "
                      "in USD per million tokens)")


def check_endpoint(cfg, stages: list[str], r: Report) -> None:
    """GET {base_url}/models: free, answers in seconds, and the same endpoint serves the Batch API."""
    from rlaif.credentials import redact_url

    for prefix, j in judges_in_use(cfg, stages):
        if j.backend != "openai" or not j.model or j.serve:
            continue  # judge.serve: the server starts with the stage; there is no endpoint to ask yet
        keyless = bool(j.api_key_env and not os.environ.get(j.api_key_env))  # its own line; still probe the URL
        if keyless and not j.base_url:
            continue  # OpenAI's own endpoint: without the key there is nothing more to learn
        if importlib.util.find_spec("openai") is None:
            continue  # the backends check says so
        import openai

        where = redact_url(j.base_url) or "https://api.openai.com/v1"
        try:
            args = j.model_copy(update={"api_key_env": None}).client_args() if keyless else j.client_args()
            client = openai.OpenAI(**args, max_retries=0, timeout=ENDPOINT_TIMEOUT_S)
            ids = [m.id for m in client.models.list()]
        except (openai.NotFoundError, openai.UnprocessableEntityError, openai.BadRequestError) as e:
            r.warnings.append(f"{prefix}.base_url: {where} has no usable /models (HTTP {e.status_code}); "
                              "the model name could not be checked")
            continue
        except openai.AuthenticationError:
            if keyless:
                continue  # reachable; the missing key is already a line
            r.problem("endpoint", f"{prefix}.api_key_env", f"{prefix}.api_key_env: authentication failed at {where}: "
                      f"the server refused the key in ${j.api_key_env or '(none: api_key_env is null)'} (HTTP 401)")
            continue
        except openai.APIStatusError as e:
            r.problem("endpoint", f"{prefix}.base_url", f"{prefix}.base_url: {where}/models answered HTTP {e.status_code}")
            continue
        except (openai.APIConnectionError, openai.APITimeoutError):
            r.problem("endpoint", f"{prefix}.base_url", f"{prefix}.base_url: {where} did not answer GET /models "
                      f"within {ENDPOINT_TIMEOUT_S:g} s (is the server up? is the URL right?)")
            continue
        r.info.setdefault("endpoints", {})[prefix] = {"url": where, "models": len(ids)}
        if j.model not in ids:
            near = ", ".join(sorted(ids, key=lambda m: _distance(m, j.model))[:3])
            r.problem("endpoint", f"{prefix}.model", f"{prefix}.model: {j.model!r} is not among the {len(ids)} "
                      f"models {where} lists" + (f" (nearest: {near})" if near else ""))


def _distance(a: str, b: str) -> float:
    import difflib

    return -difflib.SequenceMatcher(None, a, b).ratio()


def check_margins(cfg, stages: list[str], r: Report) -> None:
    """Reasoning models return no logprobs (FIELD-NOTES 2026-12-01): a binary pairwise verdict then has
    margin 1, so filter.min_margin removes nothing unless verdicts are graded (A>>B vs A>B)."""
    j = cfg.judge
    if not set(stages) & {"judge", "filter"} or j.backend != "openai" or not j.model or j.mode != "pairwise":
        return
    from rlaif.judge.backends.openai_chat import start_style

    if start_style(j, j.model) != "reasoning" or j.verdicts == "graded":
        return
    if cfg.filter.min_margin > 0:
        r.problem("margins", "filter.min_margin", f"filter.min_margin={cfg.filter.min_margin:g} does nothing with "
                  f"a reasoning judge ({j.model}): it returns no logprobs, so every binary verdict's margin is 1; "
                  "set judge.verdicts: graded (A>>B counts more than A>B) or filter.min_margin: 0")
    else:
        r.warnings.append(f"judge.model {j.model} is a reasoning model: no logprobs, so every pairwise margin is 1 "
                          "(judge.verdicts: graded gives margins from A>>B vs A>B)")


# ------------------------------------------------------------------ files

def check_files(cfg, stages: list[str], r: Report) -> None:
    from rlaif.prompts import prompt_args, read_prompts

    trained = None
    if set(stages) & {"generate", "evaluate"}:
        trained = r.guard("files", "prompts", read_prompts, *prompt_args(cfg))
    if "evaluate" in stages and cfg.evaluate.prompts:
        from rlaif.evaluate.stage import heldout_prompts  # reads both files and refuses an overlap

        if trained is not None:
            r.guard("files", "evaluate.prompts", heldout_prompts, cfg)
        else:
            r.guard("files", "evaluate.prompts", read_prompts, *prompt_args(cfg, heldout=True))
    if "evaluate" in stages and cfg.evaluate.pairs:
        r.guard("files", "evaluate.pairs", _parquet, cfg.evaluate.pairs, "evaluate.pairs")
    if set(stages) & {"judge", "evaluate", "calibrate"}:
        from rlaif.judge.templates import build_spec

        r.guard("files", "judge.rubric", build_spec, cfg.judge)
    if "judge" in stages and cfg.pairs.source != "rank":
        from rlaif.judge.pairs import revise

        r.guard("files", "pairs.source", revise.check, cfg)
        for key in ("critique_template", "revision_template"):
            path = getattr(cfg.revise, key)
            if path and not Path(path).is_file():
                r.problem("files", f"revise.{key}", f"revise.{key}: template file {path} not found")
    if cfg.calibrate.gold and "calibrate" in stages:
        from rlaif.judge.trust.gold import read_gold

        r.guard("files", "calibrate.gold", read_gold, cfg.calibrate)
    template = getattr(cfg.generate, "chat_template", None)
    if template and set(stages) & {"generate", "train", "evaluate"}:
        r.guard("files", "generate.chat_template", _jinja, template)


def _parquet(path: str, key: str) -> None:
    import polars as pl

    if not Path(path).is_file():
        raise UserError(f"{key}: {path}: file not found")
    try:
        pl.read_parquet_schema(path)
    except Exception as e:  # noqa: BLE001 - any reader error is the file's fault
        raise UserError(f"{key}: {path}: not a parquet file ({type(e).__name__})") from None


def _jinja(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"generate.chat_template: {path}: file not found (a Jinja chat template file)")
    import jinja2

    try:
        jinja2.Environment().parse(p.read_text(encoding="utf-8"))
    except (jinja2.TemplateSyntaxError, UnicodeDecodeError) as e:
        raise UserError(f"generate.chat_template: {path}: not a valid Jinja template: {e}") from None


# ------------------------------------------------------------------ backends, models, GPUs

def check_backends(cfg, stages: list[str], r: Report) -> None:
    need = []
    if "generate" in stages:
        need.append(("generate.backend", cfg.generate.backend if cfg.generate.backend == "vllm" else "transformers"))
    for prefix, j in judges_in_use(cfg, stages):
        if j.backend == "verifier":  # no model: its checks run in the sandbox (check_sandbox)
            continue
        need.append((f"{prefix}.backend", {"openai": "openai", "vllm": "vllm"}.get(j.backend, "transformers")))
        if j.serve:  # rlaif starts the server itself: its command must be there before the stage starts
            import shlex
            import shutil

            exe = shlex.split(j.serve_command or "vllm serve")[0]
            if shutil.which(exe) is None:
                r.problem("backends", f"{prefix}.serve_command", f"{prefix}.serve: {exe!r} is not on PATH here "
                          f"(pip install 'rlaif[vllm]' on the GPU machine, or {prefix}.serve_command: the full path)")
    if "train" in stages:
        need += [("train", "trl"), ("train", "peft")]
    for key, pkg in dict.fromkeys(need):
        if importlib.util.find_spec(pkg) is None:
            r.problem("backends", key, f"{key}: needs the Python package {pkg}, which is not installed here: {INSTALL[pkg]}")
    g = cfg.generate
    if "generate" in stages and g.backend == "vllm":
        if g.max_lora_rank not in VLLM_LORA_RANKS:
            r.problem("limits", "generate.max_lora_rank", f"generate.max_lora_rank={g.max_lora_rank}: vLLM accepts "
                      f"only {', '.join(map(str, VLLM_LORA_RANKS))}")
        if (cfg.rounds > 1 or g.adapter) and cfg.train.lora_r > g.max_lora_rank:
            r.problem("limits", "train.lora_r", f"train.lora_r={cfg.train.lora_r} is above generate.max_lora_rank="
                      f"{g.max_lora_rank}: vLLM would refuse round 1's adapter after round 0's training; raise "
                      "generate.max_lora_rank or lower train.lora_r")


def check_models(cfg, stages: list[str], r: Report) -> None:
    folders: dict[str, str] = {}
    if set(stages) & {"generate", "train", "evaluate"}:
        folders[(cfg.generate.model if "generate" in stages and cfg.generate.model else None) or cfg.model] = "model"
    for prefix, j in judges_in_use(cfg, stages):
        if j.backend in ("local", "vllm", "reward_model"):  # judge.model=policy: the SFT model (plus adapters)
            folders.setdefault(cfg.model if j.model in (None, "policy") else j.model, f"{prefix}.model")
    override = getattr(cfg.generate, "chat_template", None)
    for name, key in folders.items():
        folder = _folder(name, key, r)
        if folder and (key != "model" or not override):
            r.guard("models", key, _chat_template, folder, key)
    if cfg.generate.adapter and "generate" in stages and not Path(cfg.generate.adapter).is_dir():
        r.problem("models", "generate.adapter", f"generate.adapter: {cfg.generate.adapter}: no such folder")


def _folder(name: str, key: str, r: Report) -> str | None:
    from rlaif.models import demo_dir, resolve_model

    if name == "demo":
        if not (demo_dir() / "config.json").exists():
            r.warnings.append(f"{key}: the demo model is not built yet: the first stage builds it (or `rlaif demo-model`)")
            return None
        return str(demo_dir())
    return r.guard("models", key, resolve_model, name)


def _chat_template(folder: str, key: str) -> None:
    """The tokenizer alone (seconds): the stages format every prompt with its chat template."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - a broken or missing tokenizer, whatever transformers raises
        raise UserError(f"{key}: {folder}: no tokenizer could be loaded ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not tok.chat_template:
        raise UserError(f"{key}: {folder}: the tokenizer has no chat template (an SFT/instruct model has one; "
                        "or give generate.chat_template: FILE)")


def check_gpus(cfg, stages: list[str], r: Report) -> None:
    """CUDA devices and their free memory, when a stage is configured for a GPU."""
    g, t = cfg.generate, cfg.train
    gpu = ("generate" in stages and (g.backend == "vllm" or g.tensor_parallel_size > 1)) or \
          ("train" in stages and t.load_in_4bit)
    if not gpu or importlib.util.find_spec("torch") is None:
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = []
    for i in range(n):
        free, total = torch.cuda.mem_get_info(i)
        devices.append({"index": i, "name": torch.cuda.get_device_name(i), "free_gib": round(free / 2**30, 1),
                        "total_gib": round(total / 2**30, 1)})
    r.info["cuda_devices"] = devices
    if "train" in stages and t.load_in_4bit and not n:
        r.problem("gpus", "train.load_in_4bit", "train.load_in_4bit: 4-bit loading (bitsandbytes) needs a CUDA GPU; "
                  "none is visible")
    if "generate" in stages and g.backend == "vllm" and n and g.tensor_parallel_size * g.data_parallel_size > n:
        r.problem("gpus", "generate.tensor_parallel_size", f"generate.tensor_parallel_size x data_parallel_size = "
                  f"{g.tensor_parallel_size * g.data_parallel_size} GPUs, but {n} are visible")


# What may hold a GPU share while a stage runs, above the rest of the process (issue 22 item 6).
SHARE_LIMIT = 0.95  # two engines in one process fit only when their shares leave room for the CUDA context


def engine_share(j) -> float | None:
    """The card share a judge's engine claims (judge.backend=vllm, or the server judge.serve starts)."""
    if j.backend == "vllm" or j.serve:
        return float(j.serve_args.get("gpu_memory_utilization", j.gpu_memory_utilization)) if j.serve \
            else j.gpu_memory_utilization
    return None


def gpu_plan(cfg, stages: list[str]) -> list[str]:
    """What holds the GPU, in order. Stages run one at a time, each in its own process (rlaif run);
    inside evaluate the answers' engine is closed before the judge loads (generate/sample.py), so only
    the judge stage can hold two engines at once: the judge's and revise.critic's."""
    g, out = cfg.generate, []
    gen = (f"vLLM engine at generate.gpu_memory_utilization={g.gpu_memory_utilization} of "
           f"{g.tensor_parallel_size} GPU(s)" if g.backend == "vllm" else "transformers model")
    judges = {p: j for p, j in judges_in_use(cfg, stages)}
    def judge_words(j) -> str:
        share = engine_share(j)
        what = "`vllm serve`" if j.serve else "vLLM engine" if j.backend == "vllm" else f"{j.backend} judge"
        return what + (f" at {share} of the card" if share is not None else "")
    if "generate" in stages:
        out.append(f"generate: {gen}; released when the stage ends")
    if "judge" in stages and judges:
        held = " + ".join(f"{p} ({judge_words(j)})" for p, j in judges.items())
        out.append(f"judge: {held}" + ("; both held at once" if len(judges) > 1 else "") + "; released when it ends")
    if "train" in stages:
        out.append("train: the policy with its adapter (rlaif plan estimates the memory); released when it ends")
    if "evaluate" in stages:
        out.append(f"evaluate: {gen} for the answers, closed, then the judge ({judge_words(cfg.judge)})")
    return out


def check_gpu_sharing(cfg, stages: list[str], r: Report) -> None:
    """Two engines at once only when their shares are set to fit one card together."""
    r.info["gpu_plan"] = gpu_plan(cfg, stages)
    judges = [(p, j, engine_share(j)) for p, j in judges_in_use(cfg, stages) if "judge" in stages]
    both = [(p, s) for p, _, s in judges if s is not None]
    if len(both) == 2 and sum(s for _, s in both) > SHARE_LIMIT:
        (p1, s1), (p2, s2) = both
        r.problem("gpus", f"{p2}.gpu_memory_utilization",
                  f"{p1} and {p2} each start a vLLM engine and the judge stage holds both at once: "
                  f"{p1}.gpu_memory_utilization {s1} + {p2}.gpu_memory_utilization {s2} = {s1 + s2:.2f} of one "
                  f"card > {SHARE_LIMIT}; give them shares that fit together (e.g. 0.45 each), or one judge for both")


def check_sandbox(cfg, stages: list[str], r: Report) -> None:
    """Code that runs (judge.backend=verifier, evaluate's tests checks): the sandbox can be made here, or the
    external command exists; and the prompts hold tests to run, or every candidate would score 0 alike."""
    j = cfg.judge
    judged = "judge" in stages and j.backend == "verifier"
    uses = [("judge.checks", judged and any(c.tests for c in j.checks.values()), False),
            ("evaluate.checks", "evaluate" in stages and any(c.tests for c in cfg.evaluate.checks.values()), True)]
    if not any(u for _, u, _ in uses):
        return
    sb = cfg.sandbox
    if sb.command:
        import shutil

        if shutil.which(sb.command[0]) is None:
            r.problem("sandbox", "sandbox.command", f"sandbox.command: {sb.command[0]!r} is not on PATH here")
    else:
        from rlaif.sandbox import isolation

        info = r.guard("sandbox", "sandbox.mode", isolation, sb.mode)
        if info:
            r.info["sandbox"] = info
    from rlaif.prompts import prompt_args, prompt_data

    for key, used, heldout in uses:
        args = prompt_args(cfg, heldout)
        if used and args[0]:
            data = r.guard("files", "evaluate.prompts" if heldout else "prompts", prompt_data, *args[:4])
            if data is not None and not any(d.get("tests") for d in data.values()):
                r.problem("sandbox", key, f"{key}: a tests check, but no prompt in {args[0]} has a `tests` column "
                          "(map it with prompts_columns: {tests: COLUMN}): every answer would score 0")


CHECKS = (check_keys_prices, check_files, check_backends, check_models, check_endpoint, check_margins, check_gpus,
          check_gpu_sharing, check_sandbox)


def collect(cfg, stages: list[str], r: Report | None = None) -> Report:
    r = r or Report()
    r.info["stages"] = stages
    for check in CHECKS:
        check(cfg, stages, r)
    return r


def run_stages(cfg) -> list[str]:
    from rlaif.loop import stages

    return stages(cfg)


def preflight(cfg, stage: str) -> None:
    """Before a stage (or `rlaif run`, every stage) starts: all problems at once, exit 2."""
    stages = run_stages(cfg) if stage == "run" else [stage]
    r = collect(cfg, stages)
    for w in r.warnings:
        print(f"rlaif check: warning: {w}", file=sys.stderr)
    if r.problems:
        lines = r.lines()
        head = f"{len(lines)} problem(s) found before starting (rlaif check CONFIG lists them too):\n" if len(lines) > 1 else ""
        raise UserError(head + "\n".join(lines))


def main(config: str | None, overrides: list[str], stages: list[str] | None, as_json: bool) -> int:
    from rlaif.check_config import load_for_check

    r = Report()
    cfg = load_for_check(config, list(overrides), r)
    if cfg is not None:  # by default every stage the config runs, and calibrate when a gold file is set
        collect(cfg, stages or run_stages(cfg) + (["calibrate"] if cfg.calibrate.gold else []), r)
    if as_json:
        print(json.dumps({"ok": not r.problems, "problems": r.problems, "warnings": r.warnings, "info": r.info},
                         indent=2))
        return 2 if r.problems else 0
    for w in r.warnings:
        print(f"warning: {w}")
    for line in r.info.get("gpu_plan", []):
        print(f"gpu: {line}")
    for line in r.lines():
        print(f"problem: {line}")
    checked = ", ".join(r.info.get("stages", []))
    print(f"rlaif check: {len(r.problems)} problem(s), {len(r.warnings)} warning(s)"
          + (f" (checked for: {checked})" if checked else ""))
    return 2 if r.problems else 0
