"""What identifies a judge: two verdicts are comparable (and a ledger row reusable) only when
everything that can change a verdict is the same. That is the identity, part of every ledger key:

- backend and model name; for local and reward-model judges, the model folder's content (rlaif.models.folder_id)
  (a retrained or replaced model at the same path is another judge), and under judge.model=policy the
  LoRA adapter's content too (each round's policy is another judge);
- the endpoint (`judge.base_url`, credentials removed), unless `judge.identity` declares that
  several endpoints are one judge (replicas behind a balancer share verdicts);
- the request style (`judge.api_style` as configured: under `auto` one endpoint and model always
  resolve to the same style), reasoning effort and the reply caps;
- for the verifier (judge.backend=verifier): its checks and the sandbox's limits, mode and command;
- the verdict constraint as resolved (rlaif.judge.constrain: "json_schema" or "choice"), so constrained
  and free verdicts never share a key; absent when it resolves to "off", so older ledgers stay valid.

The template version (rubric, principles, template file, answer format) is keyed beside it.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from rlaif.io import stable_id

OPENAI_DEFAULT = "https://api.openai.com/v1"
def endpoint(base_url: str | None) -> str:
    """The endpoint as identity: scheme, host, port and path, never credentials; trailing / dropped."""
    parts = urlsplit(base_url or OPENAI_DEFAULT)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}{f':{parts.port}' if parts.port else ''}" \
           f"{parts.path.rstrip('/')}"


def sandbox_identity(sandbox) -> dict:
    """What of the sandbox section can change a test's outcome: its limits, mode and external command
    (never concurrency: how many run at once)."""
    return sandbox.model_dump(mode="json", exclude={"concurrency"})


def judge_identity(cfg, model: str, adapter: str | None = None, sandbox=None) -> dict:
    """The judge identity dict of a JudgeConfig whose model resolved to `model` (plus a LoRA adapter
    folder under judge.model=policy: by content, so round k's verdicts are never reused for round k+1)."""
    j = cfg
    if j.backend == "openai":
        ident = {"backend": "openai", "model": model, "endpoint": j.identity or endpoint(j.base_url),
                 "api_style": j.api_style, "reply_tokens": j.reply_tokens()}
        if j.api_style != "chat":
            ident.update(reasoning_effort=j.reasoning_effort, max_completion_tokens=j.max_completion_tokens)
        from rlaif.judge.constrain import resolve

        constraint = resolve(j)  # one GET /models per process and endpoint, unless the host says it
        if constraint != "off":
            ident["constrain"] = constraint
        return ident
    if j.backend == "verifier":  # no model: the checks and where and how code runs decide a score
        return {"backend": "verifier", "checks": {k: v.model_dump(mode="json", by_alias=True)
                                                  for k, v in sorted(j.checks.items())},
                **({"sandbox": sandbox_identity(sandbox)} if sandbox is not None else {})}
    from rlaif.models import folder_id

    ident = {"backend": j.backend, "model": j.identity or folder_id(model)}
    if adapter:
        ident["adapter"] = folder_id(adapter)
    if j.backend in ("local", "vllm") and j.explain:
        ident["reply_tokens"] = j.reply_tokens()  # local explain generates text; the cap can cut it
    return ident


def judge_id(identity: dict) -> str:
    return stable_id(identity, n=12)
