"""judge.constrain: make a verdict call's reply one of its labels, so every verdict parses (issue 22, item 4).

Served through vLLM's OpenAI server, the demo model answered "The response is not short." with free
text 48 times in 48 (every verdict invalid), although it judges fine in-process, where the local
backend reads the label logits. Where the endpoint supports it, the reply is constrained instead:

    json_schema  OpenAI's structured outputs: response_format {"type": "json_schema", strict, an enum of
                 Call.labels}; the reply is {"verdict": "Yes"} and the verdict's probability is read at
                 the label's own token inside it (rlaif/judge/templates.py verdict_top)
                 (platform.openai.com/docs/guides/structured-outputs; the Batch API takes the same body)
    choice       vLLM's structured outputs: `structured_outputs: {"choice": [...]}` (vLLM 0.32,
                 entrypoints/openai/chat_completion/protocol.py); the reply is the label itself. vLLM
                 applies the grammar bitmask to the logits before its sampler computes logprobs
                 (v1/worker/gpu_model_runner.py), so the verdict token's top logprobs are among the
                 allowed tokens. The old `guided_choice` field was removed and is now ignored with a
                 200 and unconstrained text (serve/engine/protocol.py), so it is never sent.
    off          nothing added; nothing added to the judge identity either, so ledgers of existing
                 configs stay valid

Which endpoint is which: api.openai.com and Azure OpenAI hosts by name; any other endpoint by one
GET {base_url}/models per process (cached): vLLM lists its models with `owned_by: "vllm"`
(entrypoints/serve/engine/protocol.py ModelCard). auto constrains there and nowhere else; on refuses,
in one line, an endpoint it cannot constrain. Free-text calls (explain, checklist writing, critiques,
revisions) are never constrained: their reply is the text. The local and vllm backends read the
label logits themselves: always valid, nothing to resolve.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from rlaif.errors import UserError

PROBE_TIMEOUT_S = 10.0
_owner_cache: dict[str, str | None] = {}  # base_url -> owned_by of its first model (None: no answer)


def openai_host(base_url: str | None) -> bool:
    """OpenAI's own API, or Azure OpenAI: both take response_format json_schema."""
    host = (urlsplit(base_url).hostname or "").lower() if base_url else "api.openai.com"
    return host == "api.openai.com" or host.endswith(".openai.azure.com")


def endpoint_owner(cfg) -> str | None:
    """owned_by of the first model GET {base_url}/models lists, once per process and endpoint; None when
    the endpoint does not answer (any error: the chat calls report it in their own words)."""
    if cfg.base_url not in _owner_cache:
        owner = None
        try:
            import openai

            client = openai.OpenAI(**cfg.client_args(), max_retries=0, timeout=PROBE_TIMEOUT_S)
            try:
                owner = next((getattr(m, "owned_by", None) for m in client.models.list()), None)
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - unreachable, 401, 404, not JSON: cannot tell, so not constrained
            owner = None
        _owner_cache[cfg.base_url] = owner
    return _owner_cache[cfg.base_url]


def resolve(cfg) -> str:
    """The constraint a JudgeConfig's verdict calls are sent with: "json_schema", "choice" or "off"."""
    if cfg.backend != "openai" or cfg.constrain == "off":
        return "off"  # local/vllm read label logits (always a label); reward models give no verdict
    if cfg.explain:
        if cfg.constrain == "on":
            raise UserError("judge.constrain=on: judge.explain replies are free text (a rationale, then the verdict), "
                            "which rlaif does not constrain; set judge.constrain: auto or off, or explain: false")
        return "off"
    if cfg.serve:
        return "choice"  # judge.serve: rlaif starts the vLLM server itself (rlaif/judge/serve.py)
    if openai_host(cfg.base_url):
        return "json_schema"
    owner = endpoint_owner(cfg)
    if owner == "vllm":
        return "choice"
    if cfg.constrain == "on":
        from rlaif.credentials import redact_url

        said = f"its GET /models says owned_by {owner!r}" if owner else "it did not answer GET /models"
        raise UserError(f"judge.constrain=on: {redact_url(cfg.base_url)} is neither OpenAI's API nor a vLLM server "
                        f"({said}), so rlaif cannot constrain its verdicts; set judge.constrain: auto (constrain "
                        "where supported) or off")
    return "off"


def request_fields(constraint: str, labels) -> dict:
    """What a verdict call's body gets for its labels (Call.labels); {} for free-text calls (no labels)."""
    if constraint == "off" or not labels:
        return {}
    if constraint == "choice":
        return {"structured_outputs": {"choice": list(labels)}}
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": list(labels)}},
              "required": ["verdict"], "additionalProperties": False}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True,
                                                                       "schema": schema}}}
