"""Run configuration: pydantic models (extra="forbid"), YAML files, `key.sub=value` overrides.

One model per stage, composed into `RunConfig`. A shipped YAML sets only what differs from
these defaults. Secrets never live here: a config names the environment variable that holds
an API key (`judge.api_key_env`), never the key itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from rlaif.errors import UserError
from rlaif.overrides import blame, describe, parse_overrides, set_path

NO_KEY = "EMPTY"  # sent as the key when judge.api_key_env is null (vLLM's docs use the same placeholder)


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
    # passed through under the library's own names (rlaif/passthrough.py), checked when the config loads
    sampling_args: dict[str, Any] = Field(
        default_factory=dict, description="more vllm.SamplingParams fields, e.g. {min_p: 0.05, repetition_penalty: "
                                          "1.1, stop: ['###']}; the transformers backend applies min_p, "
                                          "repetition_penalty, stop and min_tokens and refuses the rest; evaluate's "
                                          "answers use them too (its own temperature and max_tokens aside)")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="more vllm.LLM(...) / EngineArgs keywords, e.g. {max_num_seqs: 128, "
                                          "quantization: fp8} (backend vllm only)")
    system_prompt: str | None = Field(
        None, description="a system message put first in every prompt that has none (a prompt's own system "
                          "message, or its `system` column, is kept); generation, evaluation answers and so the training pairs see it")
    chat_template: str | None = Field(
        None, description="a Jinja chat template file replacing the tokenizer's, for generation, training and "
                          "evaluation (enters fingerprints by content)")

    @model_validator(mode="after")
    def _passthrough(self):
        from rlaif import passthrough as P

        try:
            P.check_names("sampling_args", "sampling_args.", self.sampling_args, P.VLLM_SAMPLING)
            P.check_names("engine_args", "engine_args.", self.engine_args, P.VLLM_ENGINE)
            if self.backend == "transformers":
                P.transformers_sampling(self.sampling_args)
                if self.engine_args:
                    raise ValueError(f"engine_args.{next(iter(self.engine_args))}: engine arguments are "
                                     "vLLM's; with generate.backend=transformers leave engine_args empty")
        except ValueError as e:
            raise _check_error(str(e)) from None
        return self


class ChecklistItem(Strict):
    item: str = Field(..., min_length=1, description="a yes/no question about the response, e.g. 'Is it a numbered list?'")
    weight: float = Field(1.0, gt=0, description="its share of the checklist score")


class JudgeConfig(Strict):
    backend: Literal["openai", "local", "vllm", "reward_model", "verifier"] = Field(
        "local", description="openai: any OpenAI-compatible endpoint; local: a causal LM in-process (transformers); "
                             "vllm: the same judge in vLLM's offline engine (one queue per stage, verdicts from its "
                             "logprobs); reward_model: a sequence-classification reward model in-process; verifier: "
                             "no model, each candidate scored by judge.checks (code tests run in the sandbox, a "
                             "reference answer, rules), judge.tiebreak deciding among equal scores")
    checks: dict[str, "CheckConfig"] = Field(
        default_factory=dict, description="judge.backend=verifier: what scores a candidate, by name, in "
                                          "evaluate.checks' kinds (tests: true runs the prompt's `tests` column, "
                                          "reference: exact|normalised|numeric matches its `reference` column); a "
                                          "candidate's score is the mean over checks (a tests check counts the share "
                                          "of tests passed, any other 1 or 0)")
    tiebreak: "JudgeConfig | None" = Field(
        None, description="judge.backend=verifier: an LLM judge section (backend, model, rubric, ...) that compares "
                          "candidates the checks score equal (all pass, all fail), both orders as usual; null: "
                          "equal scores are ties, dropped and counted")
    model: str | None = Field(
        None, description="judge model name (openai) or folder (local, vllm, reward_model; default: the SFT model); "
                          "'policy' (local, vllm): round k's candidates are judged by round k's sampling policy, the "
                          "SFT model plus round k-1's adapter (Self-Rewarding, Yuan et al. 2024)")
    meta: bool = Field(
        False, description="judge.model=policy, mode score: the policy also judges its own judgments (Meta-Rewarding, "
                           "Wu et al. 2024): pairs of its judgments of one response are compared in both orders and "
                           "the preferred one becomes a judge-training pair (kind 'judge' in pairs.parquet)")
    meta_judgments: int = Field(
        3, ge=2, le=16, description="judge.meta: judgments sampled per candidate (each pair of one response's judgments "
                                    "is meta-judged in both orders: k(k-1) calls for the response chosen)")
    meta_temperature: float = Field(1.0, gt=0, description="judge.meta: sampling temperature of those judgments")
    meta_max_tokens: int = Field(192, ge=16, description="judge.meta: reply cap of a judgment (rationale + score)")
    constrain: Literal["auto", "on", "off"] = Field(
        "auto", description="constrain the reply to the verdict labels (OpenAI structured outputs, vLLM structured "
                            "outputs / guided choice), so every verdict parses; auto: where the backend supports it "
                            "(recorded in the judge identity); on: refuse a backend that cannot")
    serve: bool = Field(
        False, description="judge.backend=openai: rlaif starts `vllm serve judge.model` on a free local port for the "
                           "stage, judges through it and stops it on exit or crash")
    serve_command: str | None = Field(
        None, description="judge.serve: how to start the server, default `vllm serve` (e.g. /opt/vllm/bin/vllm serve); "
                          "rlaif appends the model, --port and serve_args")
    serve_args: dict[str, Any] = Field(
        default_factory=dict, description="judge.serve: extra `vllm serve` flags by their names, e.g. "
                                          "{max_model_len: 4096, gpu_memory_utilization: 0.4}")
    processes: int = Field(
        1, ge=1, description="judge.backend=openai (live): client processes for one stage, each sending its share of "
                             "the calls into the one ledger (for local engines that answer faster than one process sends)")
    gpu_memory_utilization: float = Field(
        0.85, gt=0.0, le=1.0, description="judge.backend=vllm (and judge.serve): the judge engine's share of the GPU")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="judge.backend=vllm: more vllm.LLM / EngineArgs arguments by their names, "
                                          "e.g. {max_model_len: 4096, enforce_eager: true}")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1; default: OpenAI's")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="name of the environment variable holding the API key; null: no key (a local "
                                      "server). Left unset, $OPENAI_API_KEY is sent to OpenAI's endpoint only")
    identity: str | None = Field(
        None, description="declare that several endpoints are one judge (replicas behind a balancer): this name "
                          "replaces the endpoint in every ledger key, so they share verdicts")
    # what "better" means: the user's own criteria (part of every ledger key through the template version)
    rubric: str | None = Field(None, description="what to prefer: inline text, or a path to a .txt/.md file")
    principles: list[str] = Field(default_factory=list, description="short principles (a constitution), numbered in the prompt")
    template: str | None = Field(
        None, description="a whole template file of yours (YAML with system and user, the shipped templates' fields)")
    explain: bool = Field(False, description="the judge writes a short rationale, then its verdict on a final line")
    verdicts: Literal["binary", "graded"] = Field(
        "binary", description="binary: A, B or tie; graded: A>>B, A>B, A=B, B>A, B>>A (Arena-Hard-Auto's scale)")
    checklist: list[ChecklistItem | str] = Field(
        default_factory=list, description="mode=checklist: yes/no items, each asked of each candidate (RLCF)")
    checklist_from_prompt: bool = Field(
        False, description="mode=checklist: a generating judge first writes a short checklist for each prompt")
    # how requests are sent (openai backend)
    api_style: Literal["auto", "chat", "reasoning"] = Field(
        "auto", description="chat: max_tokens, temperature 0, logprobs; reasoning (GPT-5, o-series): "
                            "max_completion_tokens, no temperature, no logprobs; auto: by model name, else by the "
                            "server's first 'unsupported parameter' reply")
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        None, description="reasoning style: sent as reasoning_effort when set")
    max_completion_tokens: int = Field(
        4096, ge=16, description="reasoning style: reply cap including hidden reasoning tokens")
    mode: Literal["pairwise", "score", "checklist"] = Field(
        "pairwise", description="pairwise: both orders per pair; score: rubric score per response; "
                                "checklist: yes/no items per response, best vs worst by weighted score")
    strategy: Literal["best_vs_worst", "all_pairs"] = Field(
        "best_vs_worst", description="best_vs_worst: score all N then confirm top vs bottom in both orders (N+2 calls); all_pairs: N(N-1)")
    concurrency: int = Field(16, ge=1, description="judge calls in flight at once (openai backend)")
    batch_size: int = Field(8, ge=1, description="calls per forward pass (local backend)")
    timeout_s: float | None = Field(
        None, gt=0, description="whole-request deadline, slow-dripping replies included; default 60 s (chat), "
                                "600 s (reasoning): a timed-out attempt that is retried may be billed twice")
    max_retries: int = Field(6, ge=0, description="retries per call on 429/5xx/timeouts/connection errors")
    max_backoff_s: float = Field(60.0, gt=0, description="longest backoff; a longer Retry-After pauses the run instead")
    max_tokens: int | None = Field(
        None, ge=1, description="reply tokens (chat style); default 16, or 512 with explain")
    max_cost_usd: float | None = Field(None, ge=0, description="stop loudly when this much has been spent (ledger-wide)")
    max_calls: int | None = Field(None, ge=0, description="stop loudly after this many paid calls (ledger-wide)")
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="model -> [input, output] USD per million tokens")
    ledger: str | None = Field(None, description="SQLite ledger path, shareable across runs; default: in the round folder")
    min_consistency: float = Field(0.6, ge=0, le=1, description="fail the round if position consistency is below this")
    max_invalid_rate: float = Field(
        0.5, ge=0, le=1, description="fail the round if more than this share of verdicts is invalid (unparseable)")
    min_agreement: float | None = Field(
        None, ge=0, le=1, description="refuse to judge unless RUN_DIR/calibration holds a calibration of this judge "
                                      "(judge_id and template) with agreement >= this (rlaif calibrate)")
    max_input_tokens: int = Field(8192, ge=64, description="judge context; longer inputs are rejected, not sent")
    max_history_tokens: int = Field(
        2048, ge=0, description="a multi-turn prompt's earlier turns (estimated as characters / 3) shown to the judge; "
                                "a longer history loses its oldest turns, whole, and says how many were omitted")
    max_response_chars: int = Field(100_000, ge=1, description="longer candidate texts are rejected, not sent")
    # rate limits (openai backend): shared by every concurrent call of the process, adapting down on 429s
    rpm: int | None = Field(None, ge=1, description="requests per minute limit; None: unlimited")
    tpm: int | None = Field(None, ge=1, description="tokens per minute limit (input + max_tokens estimate); None: unlimited")
    # the OpenAI Batch API (openai backend)
    mode_api: Literal["live", "batch"] = Field("live", description="live: chat calls now; batch: the Batch API (24h, half price)")
    batch_discount: float = Field(0.5, gt=0, le=1, description="batch price = prices x this (OpenAI: 50% off)")
    batch_max_requests: int = Field(50_000, ge=1, description="requests per batch file (OpenAI limit: 50,000 per batch)")
    batch_max_bytes: int = Field(200 * 1024 * 1024, ge=1024,
                                 description="bytes per batch input file (OpenAI limit: 200 MB per batch)")
    batch_max_enqueued_tokens: int | None = Field(
        None, ge=1, description="prompt tokens (estimated as characters / 3) your batches may hold in the provider's "
                                "queue at once: each batch is cut to fit and the next is submitted only when those in "
                                "flight leave room (OpenAI: per model and usage tier, see your organization's limits "
                                "page; Azure: per deployment); None: no limit beyond requests and bytes")
    batch_poll_s: float = Field(30.0, gt=0, description="first poll interval; doubles up to batch_max_poll_s")
    batch_max_poll_s: float = Field(600.0, gt=0)
    batch_completion_window: str = Field("24h", description="the Batch API's completion_window")
    batch_fallback_live: bool = Field(False, description="send expired or failed batch items as live calls")

    @field_validator("constrain", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        return ("on" if v else "off") if isinstance(v, bool) else v  # YAML 1.1 reads a bare on/off as true/false

    def reply_tokens(self) -> int:
        """Chat-style reply cap: a verdict is a few tokens, a rationale needs room."""
        return self.max_tokens or (512 if self.explain else 16)

    def timeout_for(self, style: str) -> float:
        """Reasoning judges think before they answer: minutes, not seconds (hidden reasoning tokens come first)."""
        return self.timeout_s or (600.0 if style == "reasoning" else 60.0)

    def items(self) -> list[ChecklistItem]:
        return [ChecklistItem(item=i) if isinstance(i, str) else i for i in self.checklist]

    def api_key(self) -> str:
        """The key to send. api_key_env null sends a placeholder: the openai client, given no key, would
        read $OPENAI_API_KEY itself and hand a real key to a server that was never configured for it."""
        if self.api_key_env is None:
            return NO_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UserError(f"judge.backend=openai: environment variable {self.api_key_env} is not set "
                            "(judge.api_key_env names it; the key itself never goes in a config; "
                            "api_key_env: null for a server without a key)")
        return key

    def client_args(self) -> dict:
        """api_key, base_url and default_query for an openai client. The client appends its path to the
        whole base_url, query included (.../v1?api-key=K became /v1/?api-key=Kchat/completions, measured
        with openai 3.63), so a query (Azure's api-key=...) is split off and sent with every request."""
        from urllib.parse import parse_qsl, urlsplit, urlunsplit

        url = self.base_url
        if not url or not urlsplit(url).query:
            return {"api_key": self.api_key(), "base_url": url}
        parts = urlsplit(url)
        return {"api_key": self.api_key(), "base_url": urlunsplit(parts._replace(query="")),
                "default_query": dict(parse_qsl(parts.query, keep_blank_values=True))}

    @model_validator(mode="after")
    def _policy_judge(self):
        if self.model == "policy" and self.backend not in ("local", "vllm"):
            raise _check_error(f"model: policy judges with the policy's own weights: judge.backend local or vllm, "
                               f"not {self.backend}")
        if self.meta and (self.model != "policy" or self.mode != "score"):
            raise _check_error("meta: true needs model: policy and mode: score (Meta-Rewarding's actor is judged "
                               "by score; the meta-judge compares two of those judgments)")
        if self.serve and self.backend != "openai":
            raise _check_error("serve: true starts `vllm serve` and judges through its OpenAI API: judge.backend: "
                               f"openai (with backend {self.backend} the judge runs in-process)")
        if self.engine_args and self.backend != "vllm":
            raise _check_error(f"engine_args.{next(iter(self.engine_args))}: vLLM engine arguments, for "
                               "judge.backend: vllm (judge.serve takes serve_args)")
        if self.backend == "verifier":
            if not self.checks:
                raise _check_error("backend: verifier scores candidates by judge.checks: give at least one, e.g. "
                                   "checks: {tests: {tests: true}}")
            if self.tiebreak is not None and self.tiebreak.backend == "verifier":
                raise _check_error("tiebreak: an LLM judge section (backend openai, local or vllm), not another verifier")
        elif self.checks or self.tiebreak is not None:
            raise _check_error(f"{'checks' if self.checks else 'tiebreak'}: for judge.backend: verifier "
                               f"(backend is {self.backend})")
        return self

    @model_validator(mode="after")
    def _default_key_goes_to_openai_only(self):
        from urllib.parse import urlsplit

        host = (urlsplit(self.base_url).hostname or "") if self.base_url else "api.openai.com"
        if self.backend == "openai" and "api_key_env" not in self.model_fields_set and host != "api.openai.com":
            raise _check_error(f"base_url points at {host}: name the variable that holds its key (api_key_env: NAME), "
                               "or api_key_env: null for a server without a key; $OPENAI_API_KEY is sent to "
                               "api.openai.com only")
        return self


class FilterConfig(Strict):
    drop_length_truncated: bool = Field(True, description="drop pairs where either response hit max_tokens")
    min_margin: float = Field(0.0, ge=0.0, le=1.0, description="drop pairs whose margin (0..1) is below this")
    max_length_ratio: float | None = Field(3.0, gt=1.0, description="drop pairs whose longer/shorter token ratio exceeds this")
    balance_length: bool = Field(False, description="subsample so the chosen response is the longer one in ~chosen_longer_share of pairs")
    chosen_longer_share: float = Field(0.5, ge=0.0, le=1.0)


class PairsConfig(Strict):
    source: Literal["rank", "revise", "both"] = Field(
        "rank", description="rank: the judge ranks sampled candidates; revise: a critic critiques one sampled "
                            "response per prompt under a principle and rewrites it, (revision, original) is the pair "
                            "(Constitutional AI); both: the two, counted apart in pairs.card.json")


class ReviseConfig(Strict):
    """pairs.source revise|both (rlaif/judge/pairs/revise.py): critique and revision under one principle per pair."""
    confirm: bool = Field(True, description="the judge compares revision and original under the same principle "
                                            "(judge.mode pairwise: both orders, the revision must win both; score: "
                                            "each scored, the revision must score higher); the rest are dropped")
    critic: JudgeConfig | None = Field(
        None, description="the model that critiques and revises (a judge section: backend openai or local, model, "
                          "base_url, api_key_env, ...); default: the judge")
    critique_template: str | None = Field(None, description="your critique template file (the shipped one's fields)")
    revision_template: str | None = Field(None, description="your revision template file (the shipped one's fields)")
    max_tokens: int = Field(512, ge=16, description="reply cap of critique and revision calls (chat style)")


class TrainConfig(Strict):
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")
    loss_type: str = Field(
        "sigmoid", description="TRL DPOTrainer loss, checked against the installed TRL's list: sigmoid, ipo, hinge, "
                               "robust, exo_pair, sigmoid_norm, apo_zero, ... (comma-separated to combine, with "
                               "loss_weights); robust and exo_pair need label_smoothing")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="read by robust (the share of flipped labels, in (0, 0.5); Robust DPO suggests "
                                     "0.1), exo_pair (EXO's epsilon, > 0; its paper suggests 1e-3), aot, aot_unpaired")
    loss_weights: list[float] | None = Field(
        None, description="one weight per loss in loss_type when combining (e.g. MPO: sigmoid,bco_pair,sft with "
                          "[0.8, 0.2, 1.0]); None: 1.0 each")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="length-desensitised DPO (LD-DPO) alpha; None: off")
    learning_rate: float = Field(
        5e-6, gt=0, description="5e-6: measured, LoRA at lr 2e-4 on synthetic pairs turned SmolLM2's answers to gibberish")
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
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass: far less memory, ~10% slower (measured on "
                          "CPU). None: on with CUDA (an 8B model's activations at 2k tokens need it), off on CPU")
    precompute_ref_log_probs: bool = Field(False, description="reference log-probs once before training")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base via bitsandbytes (CUDA only)")
    reference: Literal["sft", "previous"] = Field(
        "sft", description="sft: every round against the SFT model; previous: merge last round's policy and train on top")
    merge: bool = Field(False, description="also save merged/ (base + adapter) for serving")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps; a killed run resumes from the last")
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="more fields of the installed trl.DPOConfig, e.g. {warmup_ratio: 0.1, "
                                          "lr_scheduler_type: cosine, weight_decay: 0.01, max_grad_norm: 1.0, "
                                          "optim: adamw_torch_fused}")
    lora_args: dict[str, Any] = Field(
        default_factory=dict, description="more fields of the installed peft.LoraConfig, e.g. {use_rslora: true, "
                                          "use_dora: true, modules_to_save: [lm_head]}")

    @field_validator("trainer_args", "lora_args")
    @classmethod
    def _library_knows_them(cls, v, info: ValidationInfo):
        from rlaif import passthrough as P

        if not v:
            return v
        try:
            P.check_names(info.field_name, "", v, P.dataclass_fields(info.field_name))
            P.check_values(info.field_name, v)
        except ValueError as e:
            raise _check_error(str(e)) from None
        except ImportError:  # a machine that only judges has no trl/peft: `rlaif check` names the missing package
            pass
        return v

    @field_validator("loss_type")
    @classmethod
    def _trl_knows_it(cls, v):
        from rlaif.train.losses import loss_problem, trl_loss_types

        names = [n.strip() for n in v.split(",") if n.strip()]
        if (problem := loss_problem(names, trl_loss_types())):
            raise _check_error(problem)
        return ",".join(names)

    @model_validator(mode="after")
    def _loss_settings(self):
        names, ls = self.loss_type.split(","), self.label_smoothing
        if "exo_pair" in names and ls == 0:
            raise _check_error("exo_pair needs train.label_smoothing > 0 (EXO's epsilon; its paper suggests 1e-3): "
                               "TRL refuses 0 when the trainer is built")
        if "robust" in names and ls == 0:
            raise _check_error("robust without train.label_smoothing is plain DPO: set the share of labels you "
                               "expect flipped, e.g. train.label_smoothing=0.1 (Robust DPO, Chowdhury et al. 2024)")
        if "robust" in names and ls >= 0.5:
            raise _check_error(f"robust: train.label_smoothing is a share of flipped labels and must be below 0.5 "
                               f"(got {ls})")
        from rlaif.train.losses import SMOOTHED_LOSSES

        if ls > 0 and not set(names) & set(SMOOTHED_LOSSES):
            raise _check_error(f"train.label_smoothing={ls}: only robust, exo_pair, aot and aot_unpaired read it; "
                               f"with loss_type {self.loss_type} it would be ignored")
        if self.loss_weights is not None and len(self.loss_weights) != len(names):
            raise _check_error(f"train.loss_weights: one weight per loss in train.loss_type ({len(names)} losses, "
                               f"{len(self.loss_weights)} weights)")
        return self


def _check_error(msg: str):
    from pydantic_core import PydanticCustomError

    return PydanticCustomError("check", "{msg}", {"msg": msg})  # no "Value error," prefix in the one line


class CheckConfig(Strict):
    """One independent check (rlaif/evaluate/checks.py): exactly one kind among regex, word/sentence
    limits, json and function. A bad regex or an unimportable function fails when the config loads,
    before any stage runs (not when a run is only read: load_config(import_checks=False))."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)
    regex: str | None = Field(None, description="Python regular expression searched in the response (re.search)")
    must_match: bool = Field(True, description="regex: the response must match (true) or must not match (false)")
    max_words: int | None = Field(None, ge=0, description="at most this many words (whitespace-separated)")
    min_words: int | None = Field(None, ge=0, description="at least this many words")
    max_sentences: int | None = Field(None, ge=0, description="at most this many sentences (see checks.py)")
    min_sentences: int | None = Field(None, ge=0, description="at least this many sentences")
    is_json: bool = Field(False, alias="json", description="the whole response (stripped) parses as JSON")
    function: str | None = Field(
        None, description="module:function(prompt, response) -> bool; prompt is the chat messages list")
    tests: bool = Field(
        False, description="run the prompt's `tests` column (Python asserts, or {stdin, stdout} cases) against the "
                           "code in the response (its first ```python block, else the whole reply) in the sandbox "
                           "(top-level `sandbox:`); passes when every test passes")
    reference: Literal["exact", "normalised", "numeric"] | None = Field(
        None, description="compare the response with the prompt's `reference` column: exact (stripped), normalised "
                          "(case, whitespace, punctuation ignored) or numeric (the last number in the response equals "
                          "the reference's, to 1e-6 relative)")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v):
        import re

        if v is None:  # the resolved RUN_DIR/config.yaml writes unset kinds as null
            return v
        try:
            re.compile(v)
        except re.error as e:
            raise _check_error(f"not a valid regular expression: {e}") from None
        return v

    @field_validator("function")
    @classmethod
    def _imports(cls, v, info: ValidationInfo):
        from rlaif.evaluate.checks import load_function

        if v is None or not (info.context or {}).get("import_checks", True):
            return v  # reading a finished run (status, report) never imports, let alone runs, the user's code
        try:
            load_function(v)
        except ValueError as e:
            raise _check_error(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        from rlaif.evaluate.checks import kinds

        found = kinds(self)
        if len(found) != 1:
            raise _check_error(f"give exactly one kind of check (regex, max/min_words and max/min_sentences, "
                               f"json: true, function, tests: true or reference), got {', '.join(found) or 'none'}")
        if not self.must_match and found != ["regex"]:
            raise _check_error("must_match applies to regex checks only")
        return self


# A prompt set's fields (rlaif/prompts.py); `turns` holds the user turns of a conversation to play out.
PROMPT_FIELDS = ("prompt_id", "prompt", "messages", "system", "turns", "tests", "reference")
COLUMNS_HELP = ("rlaif field -> the file's column (null: ignore it), e.g. {prompt_id: id, prompt: instruction, "
                "system: sys}; fields: " + ", ".join(PROMPT_FIELDS))
DEDUP_HELP = ("a repeated prompt_id (given, or derived from the same conversation): error refuses the file, "
              "first keeps the first row (the generate manifest counts the rows dropped)")


def _prompt_columns(v: dict) -> dict:
    bad = [k for k in v if k not in PROMPT_FIELDS]
    if bad:
        raise _check_error(f"unknown field {bad[0]!r}; map one of {', '.join(PROMPT_FIELDS)} to a column name")
    return v


class EvaluateConfig(Strict):
    prompts: str | None = Field(None, description="held-out prompts (never used for training), in `prompts`' "
                                                  "formats; None: no evaluation")
    prompts_split: str = Field("test", description="split to use when `prompts` is a saved DatasetDict or a "
                                                   "Hub-layout folder of shards")
    prompts_columns: dict[str, str | None] = Field(default_factory=dict, description=COLUMNS_HELP)
    prompts_dedup: Literal["error", "first"] = Field("error", description=DEDUP_HELP)
    n_prompts: int | None = Field(None, ge=1, description="first N held-out prompts; None: all")
    mode: Literal["pairwise", "score"] = Field(
        "pairwise", description="pairwise: policy vs SFT in both orders; score: each answer scored alone")
    temperature: float = Field(0.0, ge=0, description="0: greedy; other sampling settings come from generate")
    max_tokens: int | None = Field(None, ge=1, description="None: generate.max_tokens")
    vs_previous: bool = Field(True, description="also judge round k's policy against round k-1's")
    judge_policy: bool = Field(
        False, description="with judge.model=policy: evaluate round k with round k's policy as the judge (biased toward "
                           "itself: the report's first line says so); default: the SFT model judges the evaluation")
    pairs: str | None = Field(None, description="held-out pairs parquet (pairs schema) for implicit-reward accuracy")
    max_pairs: int = Field(256, ge=1, description="at most this many held-out pairs are scored")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples for the win-rate and check intervals")
    length_anchor_prompts: int = Field(
        200, ge=0, description="LC's length slope: the judge compares two of the round's candidates for up to this "
                               "many training prompts (evaluate.mode's way; free when the judge stage already "
                               "made that call, else 2 calls a prompt); 0: no LC (rlaif/evaluate/lc_anchor.py)")
    checks: dict[str, CheckConfig] = Field(
        default_factory=dict, description="named checks measured without the judge on policy and SFT answers, e.g. "
                                          "{short: {max_words: 120}, no_sorry: {regex: 'sorry', must_match: false}}")

    @field_validator("prompts_columns")
    @classmethod
    def _columns(cls, v):
        return _prompt_columns(v)

    @field_validator("checks")
    @classmethod
    def _names(cls, v):
        import re

        bad = [n for n in v if not re.fullmatch(r"[A-Za-z0-9_-]+", n)]
        if bad:  # names become eval.json keys, plot labels and key.sub=value overrides
            raise _check_error(f"check name {bad[0]!r}: use letters, digits, _ and - only")
        return v


GOLD_FIELDS = ("prompt_id", "messages", "prompt", "response_a", "response_b", "human")


class CalibrateConfig(Strict):
    """`rlaif calibrate` (rlaif/judge/trust/calibrate.py): the judge on human-labelled gold pairs."""
    gold: str | None = Field(None, description="gold pairs: JSONL, parquet, CSV or a saved HF dataset folder "
                                               "(`gold=PATH` on the command line)")
    split: str = Field("train", description="split to use when gold is a saved DatasetDict")
    columns: dict[str, str | None] = Field(
        default_factory=dict, description="rlaif field -> the file's column (null: ignore it), e.g. {response_a: "
                                          "chosen, response_b: rejected, human: winner}; fields: " + ", ".join(GOLD_FIELDS))
    human_values: dict[str, Literal["a", "b", "tie"]] = Field(
        default_factory=dict, description="the file's label -> a|b|tie, e.g. {model_a: a, model_b: b, "
                                          "'tie (bothbad)': tie}; a, b and tie (any case) are always understood")
    a_is_preferred: bool = Field(
        False, description="no human column: response_a (e.g. chosen) is preferred in every row; a fixed half of "
                           "the rows is swapped to b, so kappa is not degenerate")
    max_rows: int | None = Field(None, ge=1, description="use only the first N gold rows")
    run_dir: str | None = Field(None, description="run folder whose candidates the projected cost prices; default run_dir")
    round: int | None = Field(None, ge=0, description="round of those candidates; default `round`")

    @field_validator("columns")
    @classmethod
    def _known(cls, v):
        bad = [k for k in v if k not in GOLD_FIELDS]
        if bad:
            raise _check_error(f"unknown field {bad[0]!r}; map one of {', '.join(GOLD_FIELDS)} to a column name")
        return v

    @field_validator("human_values", mode="before")
    @classmethod
    def _str_keys(cls, v):  # YAML reads `1: a` with an int key; labels are compared as text
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v


class ExportConfig(Strict):
    """`rlaif export` (rlaif/train/export.py): how the cards name the models, for a reader on another machine."""
    base_model: str | None = Field(
        None, description="the base model's Hugging Face Hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct: the model "
                          "card's base_model and the exported adapter_config.json name it; default: the model "
                          "folder's name, never its local path")
    judge_model: str | None = Field(
        None, description="the judge's Hub id (or API model name) for the dataset card; default: the judge's model "
                          "name, or its folder's name when it is a local folder")


class RunSection(Strict):
    accumulate_pairs: bool = False
    stop_on_length_hacking: bool = Field(
        True, description="stop when policy answers grow > max_length_growth while the LC win rate does not rise")
    max_length_growth: float = Field(0.2, gt=0, description="share of growth in mean tokens per round (0.2 = 20%)")


JudgeConfig.model_rebuild()  # judge.checks names CheckConfig, defined after it


class SandboxConfig(Strict):
    """Where candidate code runs (rlaif/sandbox.py, docs/sandbox.md): a process of its own per test, with limits,
    no network and a scrubbed environment; never inside an rlaif process."""
    mode: Literal["strict", "best_effort"] = Field(
        "strict", description="strict: refuse to run where no new network namespace can be made; best_effort: run "
                              "with what the kernel allows and say so in the reports")
    command: list[str] | None = Field(
        None, description="an external sandbox's argv with {dir} (the folder holding the program) and {file} (its "
                          "name), e.g. [docker, run, --rm, -i, --network=none, -v, '{dir}:/work', python:3.12, "
                          "python, '/work/{file}']; null: rlaif's own")
    cpu_s: float = Field(5.0, gt=0, description="CPU seconds per execution (RLIMIT_CPU)")
    wall_s: float = Field(10.0, gt=0, description="wall seconds per execution; then its processes are killed")
    memory_mb: int = Field(256, ge=16, description="address space per process of an execution (RLIMIT_AS), MiB; no cgroup: the worst case is procs x memory_mb per execution")
    file_mb: int = Field(16, ge=0, description="largest file an execution may write (RLIMIT_FSIZE), MiB")
    procs: int = Field(16, ge=1, description="processes and threads an execution may have")
    output_kb: int = Field(64, ge=1, description="stdout + stderr kept per execution; more fails the test")
    concurrency: int = Field(2, ge=1, description="executions at once")

    def limits(self):
        from rlaif.sandbox import Limits

        return Limits(cpu_s=self.cpu_s, wall_s=self.wall_s, memory_mb=self.memory_mb, file_mb=self.file_mb,
                      procs=self.procs, output_kb=self.output_kb)


class RunConfig(Strict):
    run_dir: str = Field("runs/default", description="where every stage reads and writes")
    round: int = Field(0, ge=0, description="round this stage works on")
    rounds: int = Field(1, ge=1)
    seed: int = 0
    model: str = Field("demo", description='SFT model folder, or "demo" for the offline SmolLM2-135M-Instruct')
    prompts: str = Field(..., description="prompts: a JSONL, parquet or CSV file, a folder of .parquet/.jsonl "
                                          "shards (Hub layout data/train-*.parquet, or plain) or a saved HF dataset")
    prompts_split: str = Field("train", description="split to use when `prompts` is a saved DatasetDict or a "
                                                    "Hub-layout folder of shards")
    prompts_columns: dict[str, str | None] = Field(default_factory=dict, description=COLUMNS_HELP)
    prompts_dedup: Literal["error", "first"] = Field("error", description=DEDUP_HELP)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    revise: ReviseConfig = Field(default_factory=ReviseConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    run: RunSection = Field(default_factory=RunSection)
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("prompts_columns")
    @classmethod
    def _columns(cls, v):
        return _prompt_columns(v)

    @model_validator(mode="after")
    def _verifier_evaluates_by_score(self):
        if self.judge.backend != "verifier":
            return self
        if "mode" not in self.evaluate.model_fields_set:  # the verifier scores answers alone: score is the default
            self.evaluate.mode = "score"
        if self.evaluate.mode != "score":
            raise _check_error("evaluate.mode: with judge.backend=verifier each held-out answer is scored by the "
                               "checks (mode: score); pairwise needs a model judge")
        return self

    def round_dir(self, k: int | None = None) -> Path:
        return Path(self.run_dir) / f"round-{self.round if k is None else k}"


def load_config(path: str | Path | None, overrides: list[str] = (), *, import_checks: bool = True) -> RunConfig:
    """Read YAML (if given), apply overrides, validate; an error names the key, and the override
    that set it or else the file. import_checks=False: a check's `module:function` is not imported
    (rlaif status and report read a run; they never need, or run, the user's code)."""
    data: dict = {}
    where = str(path) if path else "command line"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise UserError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML: {e}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise UserError(f"{p}: top level must be a mapping of keys")
    parsed = parse_overrides(RunConfig, list(overrides))
    for key_path, value, item in parsed:
        set_path(data, key_path, item, value)
    try:
        return RunConfig.model_validate(data, context={"import_checks": import_checks})
    except ValidationError as e:
        by: dict[str | None, list[str]] = {}
        for err in e.errors():
            by.setdefault(blame(err, parsed), []).append(describe(RunConfig, err))
        over = f" (applied to {path})" if path else ""
        parts = [f"override{'s' if ', ' in item else ''} {item}{over}: {'; '.join(m)}"
                 for item, m in by.items() if item is not None]
        if None in by:
            parts.append(f"{where}: {'; '.join(by[None])}")
        raise UserError("; ".join(parts)) from None


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML. It holds env-var names only, never key values; a judge.base_url
    carrying credentials (user:token@host, ?api-key=...) is saved with them masked."""
    from rlaif.credentials import redact_url

    data = cfg.model_dump(mode="json")
    data["judge"]["base_url"] = redact_url(data["judge"]["base_url"])
    if data["revise"]["critic"]:
        data["revise"]["critic"]["base_url"] = redact_url(data["revise"]["critic"]["base_url"])
    if data["judge"]["tiebreak"]:
        data["judge"]["tiebreak"]["base_url"] = redact_url(data["judge"]["tiebreak"]["base_url"])
    return yaml.safe_dump(data, sort_keys=False)
