"""Run configuration: pydantic models (extra="forbid"), YAML files, `key.sub=value` overrides.

One model per stage, composed into `RunConfig`. A shipped YAML sets only what differs from
these defaults. Secrets never live here: a config names the environment variable that holds
an API key (`judge.api_key_env`), never the key itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlaif.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerateConfig(Strict):
    backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers (CPU or small GPU) or vllm (GPU)")
    n: int = Field(4, ge=1, description="candidate responses sampled per prompt")
    max_tokens: int = Field(256, ge=1, description="max new tokens per response")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: off (both backends sample the same distribution)")
    batch_size: int = Field(8, ge=1, description="prompts per model.generate call (transformers backend)")
    shard_size: int = Field(64, ge=1, description="prompts per parquet shard; a rerun resumes from finished shards")
    max_model_len: int | None = Field(None, ge=8, description="context length; default: the model's own")
    max_prompts: int | None = Field(None, ge=1, description="use only the first N prompts")
    model: str | None = Field(None, description="base model to sample from; default: the SFT `model` (rlaif run sets it for later rounds)")
    adapter: str | None = Field(None, description="LoRA adapter folder to sample from (later rounds)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    # vLLM only
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine (shards one model across them)")
    data_parallel_size: int = Field(
        1, ge=1, description="vLLM engines on one machine, each on its own tensor_parallel_size GPUs, splitting the shards")
    worker: str | None = Field(
        None, pattern=r"^\d+/\d+$", description='"I/N": this process samples only shards i with i % N == I (multi-node)')
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    enforce_eager: bool = Field(False, description="skip CUDA graphs / torch.compile (faster start, needed on CPU vLLM)")
    max_lora_rank: int = Field(64, ge=1)


class JudgeConfig(Strict):
    backend: Literal["openai", "local"] = Field("local", description="openai: any OpenAI-compatible endpoint; local: in-process transformers")
    model: str | None = Field(None, description="judge model name (openai) or folder (local; default: the SFT model)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1; default: OpenAI's")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the API key")
    mode: Literal["pairwise", "score"] = Field("pairwise", description="pairwise: both orders per pair; score: rubric score per response")
    strategy: Literal["best_vs_worst", "all_pairs"] = Field(
        "best_vs_worst", description="best_vs_worst: score all N then confirm top vs bottom in both orders (N+2 calls); all_pairs: N(N-1)")
    concurrency: int = Field(16, ge=1, description="judge calls in flight at once (openai backend)")
    batch_size: int = Field(8, ge=1, description="calls per forward pass (local backend)")
    timeout_s: float = Field(60.0, gt=0, description="whole-request deadline, slow-dripping replies included")
    max_retries: int = Field(6, ge=0, description="retries per call on 429/5xx/timeouts/connection errors")
    max_backoff_s: float = Field(60.0, gt=0, description="longest backoff; a longer Retry-After pauses the run instead")
    max_tokens: int = Field(8, ge=1, description="reply tokens: the verdict is one short token")
    max_cost_usd: float | None = Field(None, ge=0, description="stop loudly when this much has been spent (ledger-wide)")
    max_calls: int | None = Field(None, ge=0, description="stop loudly after this many paid calls (ledger-wide)")
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="model -> [input, output] USD per million tokens")
    ledger: str | None = Field(None, description="SQLite ledger path, shareable across runs; default: in the round folder")
    min_consistency: float = Field(0.6, ge=0, le=1, description="fail the round if position consistency is below this")
    max_input_tokens: int = Field(8192, ge=64, description="judge context; longer inputs are rejected, not sent")
    max_response_chars: int = Field(100_000, ge=1, description="longer candidate texts are rejected, not sent")
    # rate limits (openai backend): shared by every concurrent call of the process, adapting down on 429s
    rpm: int | None = Field(None, ge=1, description="requests per minute limit; None: unlimited")
    tpm: int | None = Field(None, ge=1, description="tokens per minute limit (input + max_tokens estimate); None: unlimited")
    # the OpenAI Batch API (openai backend)
    mode_api: Literal["live", "batch"] = Field("live", description="live: chat calls now; batch: the Batch API (24h, half price)")
    batch_discount: float = Field(0.5, gt=0, le=1, description="batch price = prices x this (OpenAI: 50% off)")
    batch_max_requests: int = Field(50_000, ge=1, description="requests per batch file (OpenAI limit: 50,000)")
    batch_max_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="bytes per batch file (OpenAI limit: 200 MB)")
    batch_poll_s: float = Field(30.0, gt=0, description="first poll interval; doubles up to batch_max_poll_s")
    batch_max_poll_s: float = Field(600.0, gt=0)
    batch_completion_window: str = Field("24h", description="the Batch API's completion_window")
    batch_fallback_live: bool = Field(False, description="send expired or failed batch items as live calls")


class FilterConfig(Strict):
    drop_length_truncated: bool = Field(True, description="drop pairs where either response hit max_tokens")
    min_margin: float = Field(0.0, ge=0.0, le=1.0, description="drop pairs whose margin (0..1) is below this")
    max_length_ratio: float | None = Field(3.0, gt=1.0, description="drop pairs whose longer/shorter token ratio exceeds this")
    balance_length: bool = Field(False, description="subsample so the chosen response is the longer one in ~chosen_longer_share of pairs")
    chosen_longer_share: float = Field(0.5, ge=0.0, le=1.0)


class TrainConfig(Strict):
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")
    loss_type: str = Field("sigmoid", description="TRL loss: sigmoid, ipo, robust, sigmoid_norm, hinge, ... (comma-separated to combine)")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="length-desensitised DPO (LD-DPO) alpha; None: off")
    learning_rate: float = Field(5e-6, gt=0, description="5e-6: lr 2e-4 LoRA wrecked SmolLM2 here (FIELD-NOTES)")
    max_steps: int = Field(-1, description="-1: run num_epochs")
    num_epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, description="pairs per device step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="prompt + response tokens")
    overlong: Literal["drop", "truncate"] = Field("drop", description="pairs over max_length: dropped and counted, or truncated")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = Field("all-linear", description='"all-linear" or module names')
    gradient_checkpointing: bool = Field(False, description="less memory, ~10% slower (FIELD-NOTES)")
    precompute_ref_log_probs: bool = Field(False, description="reference log-probs once before training")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base via bitsandbytes (CUDA only)")
    reference: Literal["sft", "previous"] = Field(
        "sft", description="sft: every round against the SFT model; previous: merge last round's policy and train on top")
    merge: bool = Field(False, description="also save merged/ (base + adapter) for serving")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps; a killed run resumes from the last")
    report_to: Literal["none", "tensorboard", "wandb"] = "none"


class EvaluateConfig(Strict):
    prompts: str | None = Field(None, description="held-out prompts (never used for training); None: no evaluation")
    prompts_split: str = Field("test", description="split to use when `prompts` is a saved DatasetDict")
    n_prompts: int | None = Field(None, ge=1, description="first N held-out prompts; None: all")
    mode: Literal["pairwise", "score"] = Field(
        "pairwise", description="pairwise: policy vs SFT in both orders; score: each answer scored alone")
    temperature: float = Field(0.0, ge=0, description="0: greedy; other sampling settings come from generate")
    max_tokens: int | None = Field(None, ge=1, description="None: generate.max_tokens")
    vs_previous: bool = Field(True, description="also judge round k's policy against round k-1's")
    pairs: str | None = Field(None, description="held-out pairs parquet (pairs schema) for implicit-reward accuracy")
    max_pairs: int = Field(256, ge=1, description="at most this many held-out pairs are scored")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples for the win-rate interval")


class RunSection(Strict):
    accumulate_pairs: bool = False
    stop_on_length_hacking: bool = Field(
        True, description="stop when policy answers grow > max_length_growth while the LC win rate does not rise")
    max_length_growth: float = Field(0.2, gt=0, description="share of growth in mean tokens per round (0.2 = 20%)")


class RunConfig(Strict):
    run_dir: str = Field("runs/default", description="where every stage reads and writes")
    round: int = Field(0, ge=0, description="round this stage works on")
    rounds: int = Field(1, ge=1)
    seed: int = 0
    model: str = Field("demo", description='SFT model folder, or "demo" for the offline SmolLM2-135M-Instruct')
    prompts: str = Field(..., description="prompts file: JSONL, parquet, CSV or a saved HF dataset folder")
    prompts_split: str = Field("train", description="split to use when `prompts` is a saved DatasetDict")
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    run: RunSection = Field(default_factory=RunSection)

    def round_dir(self, k: int | None = None) -> Path:
        return Path(self.run_dir) / f"round-{self.round if k is None else k}"


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"override {dotted}: {p} is not a section")
        node = nxt
    node[leaf] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or " " in key:
            raise UserError(f"override {item!r}: expected key.sub=value, e.g. generate.n=8")
        out.append((key, yaml.safe_load(raw) if raw != "" else None))
    return out


def _describe(err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (if given), apply overrides, validate; errors name the key and the file."""
    data: dict = {}
    where = str(path) if path else "command line"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML: {e}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise UserError(f"{p}: top level must be a mapping of keys")
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(_describe(err) for err in e.errors())
        raise UserError(f"{where}: {msgs}") from None


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML. It holds env-var names only, never key values."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
