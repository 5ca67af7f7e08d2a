"""Settings passed through to TRL, PEFT and vLLM under their own names, checked when the config loads.

    train.trainer_args: {warmup_ratio: 0.1, lr_scheduler_type: cosine}   -> trl.DPOConfig(...)
    train.lora_args: {use_rslora: true, use_dora: true}                   -> peft.LoraConfig(...)
    generate.sampling_args: {min_p: 0.05, stop: ["###"]}                  -> vllm.SamplingParams(...)
    generate.engine_args: {max_num_seqs: 128, quantization: fp8}          -> vllm.LLM(...)

A name is checked against the installed library's own dataclass (DPOConfig, LoraConfig), or, for
vLLM (often not installed where a config is written, and 40 s to import on a CPU), against the field
names of vLLM 0.32 recorded below; tests/test_passthrough.py asserts the recorded lists equal the real
classes in the vLLM venv, so they cannot drift silently. An unknown name gets a "did you mean"; a
name rlaif already sets is refused with the rlaif key to use, so one setting has one place.
"""
from __future__ import annotations

import difflib

# What rlaif sets itself, and the key that sets it (rlaif/train/stage.py dpo_args and build_trainer;
# rlaif/generate/vllm_backend.py engine_args and _params; rlaif/generate/hf.py).
OWNED = {
    "trainer_args": {
        "output_dir": "run_dir", "per_device_train_batch_size": "train.batch_size",
        "gradient_accumulation_steps": "train.gradient_accumulation_steps", "learning_rate": "train.learning_rate",
        "max_steps": "train.max_steps", "num_train_epochs": "train.num_epochs", "beta": "train.beta",
        "loss_type": "train.loss_type", "loss_weights": "train.loss_weights", "label_smoothing": "train.label_smoothing",
        "ld_alpha": "train.ld_alpha", "max_length": "train.max_length",
        "precompute_ref_log_probs": "train.precompute_ref_log_probs",
        "gradient_checkpointing": "train.gradient_checkpointing", "seed": "seed", "data_seed": "seed",
        "save_steps": "train.save_steps", "report_to": "train.report_to",
        "activation_checkpointing": "train.gradient_checkpointing", "bf16": "(rlaif: bf16 on CUDA, fp32 on CPU)",
        "logging_steps": "(rlaif logs every step: train-metrics.jsonl)", "save_strategy": "train.save_steps",
        "save_total_limit": "(rlaif keeps the last 2 checkpoints for resuming)", "disable_tqdm": "(always off)",
    },
    "lora_args": {"r": "train.lora_r", "lora_alpha": "train.lora_alpha", "lora_dropout": "train.lora_dropout",
                  "target_modules": "train.lora_target_modules", "task_type": "(always CAUSAL_LM)"},
    "sampling_args": {"n": "generate.n", "temperature": "generate.temperature", "top_p": "generate.top_p",
                      "top_k": "generate.top_k", "max_tokens": "generate.max_tokens", "seed": "seed"},
    "engine_args": {"model": "model", "tokenizer": "model", "seed": "seed", "dtype": "generate.dtype",
                    "tensor_parallel_size": "generate.tensor_parallel_size",
                    "data_parallel_size": "generate.data_parallel_size",
                    "gpu_memory_utilization": "generate.gpu_memory_utilization",
                    "enforce_eager": "generate.enforce_eager", "max_model_len": "generate.max_model_len",
                    "enable_lora": "generate.adapter", "max_lora_rank": "generate.max_lora_rank",
                    "max_loras": "generate.adapter"},
}

# vllm.SamplingParams fields, vLLM 0.32 (vllm/sampling_params.py: msgspec __struct_fields__, public ones)
VLLM_SAMPLING = (
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "watermarking", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start", "logprob_token_ids", "flat_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "output_kind", "stream_interval", "skip_clone", "output_text_buffer_length", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words", "skip_reading_prefix_cache", "thinking_token_budget",
    "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids",
)

# vllm.EngineArgs fields, vLLM 0.32 (vllm/engine/arg_utils.py), what LLM(**kwargs) accepts
VLLM_ENGINE = (
    "model", "enable_return_routed_experts", "return_sampling_mask", "model_weights", "served_model_name",
    "tokenizer", "hf_config_path", "runner", "convert", "skip_tokenizer_init", "enable_prompt_embeds",
    "tokenizer_mode", "trust_remote_code", "allowed_local_media_path", "allowed_media_domains", "download_dir",
    "safetensors_load_strategy", "safetensors_prefetch_num_threads", "safetensors_prefetch_block_size",
    "load_format", "config_format", "dtype", "kv_cache_dtype", "seed", "max_model_len", "cudagraph_capture_sizes",
    "max_cudagraph_capture_size", "ir_op_priority", "distributed_executor_backend", "pipeline_parallel_size",
    "master_addr", "master_port", "nnodes", "node_rank", "distributed_timeout_seconds",
    "cpu_distributed_timeout_seconds", "numa_bind", "numa_bind_nodes", "numa_bind_cpus", "device_ids",
    "tensor_parallel_size", "prefill_context_parallel_size", "decode_context_parallel_size", "dcp_comm_backend",
    "dcp_q_replicate", "dcp_kv_cache_interleave_size", "cp_kv_cache_interleave_size", "data_parallel_size",
    "data_parallel_rank", "data_parallel_start_rank", "data_parallel_size_local", "data_parallel_address",
    "data_parallel_rpc_port", "data_parallel_hybrid_lb", "data_parallel_external_lb",
    "data_parallel_multi_port_external_lb", "data_parallel_backend", "enable_hc_sp", "enable_expert_parallel",
    "enable_batch_sharded_sampling", "enable_ep_weight_filter", "moe_backend", "linear_backend",
    "sparse_indexer_topk_backend", "all2all_backend", "enable_elastic_ep", "elastic_ep_max_dp_size", "enable_dbo",
    "ubatch_size", "dbo_decode_token_threshold", "dp_sync_interval", "dbo_prefill_token_threshold",
    "disable_nccl_for_dp_synchronization", "eplb_config", "enable_eplb", "expert_placement_strategy",
    "max_parallel_loading_workers", "block_size", "enable_prefix_caching", "prefix_caching_hash_algo",
    "prefix_cache_retention_interval", "disable_sliding_window", "disable_cascade_attn", "offload_backend",
    "cpu_offload_gb", "cpu_offload_params", "offload_group_size", "offload_num_in_group", "offload_prefetch_step",
    "offload_params", "gpu_memory_utilization", "kv_cache_memory_bytes", "max_num_batched_tokens",
    "max_num_scheduled_tokens", "long_prefill_token_threshold", "long_prefill_token_threshold_adaptive",
    "max_num_seqs", "max_num_active_seqs", "max_num_queued_reqs", "max_num_queued_tokens", "max_logprobs",
    "logprobs_mode", "use_fp64_gumbel", "enable_trace_replay", "disable_log_stats", "aggregate_engine_logging",
    "revision", "code_revision", "hf_token", "hf_overrides", "model_class_overrides", "tokenizer_revision",
    "quantization", "quantization_config", "allow_deprecated_quantization", "enforce_eager",
    "disable_custom_all_reduce", "enable_shm_tensor_arena", "language_model_only", "limit_mm_per_prompt",
    "enable_mm_embeds", "interleave_mm_strings", "media_io_kwargs", "mm_processor_kwargs", "mm_processor_cache_gb",
    "mm_processor_cache_type", "mm_hasher_algorithm", "mm_shm_cache_max_object_size_mb", "mm_encoder_only",
    "mm_encoder_tp_mode", "mm_encoder_attn_backend", "mm_encoder_attn_dtype", "mm_encoder_fp8_scale_path",
    "mm_encoder_fp8_scale_save_path", "mm_encoder_fp8_scale_save_margin", "io_processor_plugin",
    "renderer_num_workers", "skip_mm_profiling", "video_pruning_rate", "video_pruning_method", "mm_tensor_ipc",
    "mm_processor_device", "mm_ipc_gpu_memory_gb", "mm_device_do_normalize", "enable_lora", "max_loras",
    "max_lora_rank", "default_mm_loras", "fully_sharded_loras", "max_cpu_loras", "lora_dtype",
    "lora_target_modules", "enable_tower_connector_lora", "specialize_active_lora", "enable_mixed_moe_lora_format",
    "enable_moe_shared_loras", "max_lora_cls_labels", "ray_workers_use_nsight", "num_gpu_blocks_override",
    "model_loader_extra_config", "ignore_patterns", "enable_chunked_prefill", "disable_chunked_mm_input",
    "scheduler_reserve_full_isl", "prefill_schedule_interval", "watermark", "disable_hybrid_kv_cache_manager",
    "structured_outputs_config", "aux_output_config", "reasoning_parser", "reasoning_parser_plugin",
    "speculative_config", "spec_method", "spec_model", "spec_tokens", "watermark_config", "diffusion_config",
    "show_hidden_metrics_for_version", "otlp_traces_endpoint", "collect_detailed_traces",
    "per_request_spec_decode_metrics", "kv_cache_metrics", "kv_cache_metrics_sample", "custom_histogram_buckets",
    "cudagraph_metrics", "enable_layerwise_nvtx_tracing", "enable_mfu_metrics", "enable_logging_iteration_details",
    "jit_monitor_mode", "jit_monitor_verbose", "enable_mm_processor_stats", "scheduling_policy", "scheduler_cls",
    "pooler_config", "compilation_config", "attention_config", "engram_config", "mamba_config", "kernel_config",
    "enable_flashinfer_autotune", "worker_cls", "worker_extension_cls", "profiler_config", "logging_config",
    "log_level", "log_config_file", "kv_transfer_config", "kv_events_config", "ec_transfer_config",
    "ec_manager_config", "reasoning_config", "generation_config", "enable_sleep_mode",
    "sleep_mode_offload_cudagraph", "sleep_preserve_parameter_names", "enable_cumem_allocator",
    "enable_nccl_comm_suspend", "override_generation_config", "model_impl", "attention_backend",
    "kv_cache_dtype_skip_layers", "mamba_cache_dtype", "mamba_ssm_cache_dtype", "mamba_block_size",
    "prefix_match_unit", "mamba_cache_mode", "enable_mamba_shared_prefix_checkpoint", "replayssm_buffer_len",
    "use_replayssm", "mamba_backend", "mamba_ssu_algorithm", "enable_mamba_cache_stochastic_rounding",
    "mamba_cache_philox_rounds", "additional_config", "use_tqdm_on_load", "pt_load_map_location",
    "logits_processors", "async_scheduling", "stream_interval", "kv_sharing_fast_prefill", "swa_bounded_replay",
    "optimization_level", "performance_mode", "fault_tolerance_config", "enable_fault_tolerance",
    "kv_offloading_size", "kv_offloading_backend", "tokens_only", "shutdown_timeout", "weight_transfer_config",
    "fail_on_environ_validation", "gdn_prefill_backend", "kda_prefill_backend", "kda_decode_backend",
)

# The transformers backend: vLLM's name -> transformers GenerationConfig's (what it can apply).
HF_SAMPLING = {"min_p": "min_p", "repetition_penalty": "repetition_penalty", "stop": "stop_strings",
               "min_tokens": "min_new_tokens", "bad_words": None, "ignore_eos": None}


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_names(kind: str, prefix: str, args: dict, known) -> None:
    """Raise ValueError naming the first unknown or rlaif-owned key (`prefix` + name: the error's
    location names the rest of the key)."""
    for name in args:
        if name in OWNED[kind]:
            raise ValueError(f"{prefix}{name}: rlaif sets {name} itself; use {OWNED[kind][name]}")
        if name not in known:
            raise ValueError(f"{prefix}{name}: not a field of {LIBRARY[kind]}{_suggest(name, known)}")


LIBRARY = {"trainer_args": "the installed trl.DPOConfig", "lora_args": "the installed peft.LoraConfig",
           "sampling_args": "vllm.SamplingParams (vLLM 0.32)", "engine_args": "vllm.EngineArgs (vLLM 0.32)"}


def dataclass_fields(kind: str) -> set[str]:
    """The real field names: DPOConfig and LoraConfig from the installed TRL and PEFT."""
    import dataclasses

    if kind == "trainer_args":
        from trl import DPOConfig

        return {f.name for f in dataclasses.fields(DPOConfig)}
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


def check_values(kind: str, args: dict) -> None:
    """Build the real DPOConfig / LoraConfig from the passed values alone (14 ms, no files written:
    measured with TRL 1.16), so a bad value (lr_scheduler_type: cosin) fails at load, not after a
    round of generation and judging. ValueError naming the field's key."""
    if kind == "trainer_args":
        from trl import DPOConfig as build

        extra = {"output_dir": "unused", "bf16": False}  # placeholders: rlaif sets both itself
    else:
        from peft import LoraConfig as build

        extra = {}
    try:
        build(**extra, **args)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{kind}: {LIBRARY[kind]} refuses {args}: {str(e).splitlines()[0][:300]}") from None


def transformers_sampling(args: dict) -> dict:
    """sampling_args for the transformers backend, under GenerationConfig's names; what it cannot do
    is refused when the config loads (ValueError naming the key)."""
    out = {}
    for name, value in args.items():
        hf = HF_SAMPLING.get(name)
        if hf is None:
            raise ValueError(f"sampling_args.{name}: the transformers backend cannot apply it (it maps "
                             f"{', '.join(k for k, v in HF_SAMPLING.items() if v)}); use generate.backend=vllm or drop it")
        out[hf] = [value] if name == "stop" and isinstance(value, str) else value
    return out
