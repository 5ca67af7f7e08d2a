"""Credentials in URLs: a judge.base_url may carry a secret (user:token@host, ?api-key=...), as API
keys do in environment variables. `redact_url` is the form that may be printed or saved (config.yaml,
logs, manifests, errors, the judge identity); `rlaif run` hands the real URLs to its stage processes
in $RLAIF_RUN_SECRETS (environment only: never in a file, nor on a command line where `ps` shows it
to every user), and each stage puts back exactly the values config.yaml holds masked."""
from __future__ import annotations

import json
import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Query parameters that carry credentials in the wild (Azure's api-key, key=, token=, sig=, ...).
SECRET_PARAM = re.compile(r"(key|token|secret|sig|signature|password|auth|credential)", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """The URL without userinfo and without credential-like query values: safe to print or save."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    netloc = (("***@" if parts.username or parts.password else "") + host
              + (f":{parts.port}" if parts.port else "")) if parts.netloc else parts.netloc
    query = urlencode([(k, "***" if SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query,
                                                                                           keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


SECRETS_ENV = "RLAIF_RUN_SECRETS"  # rlaif run -> its stages: the URLs config.yaml holds masked


def _judges(cfg) -> list:  # cfg: a RunConfig (not imported: rlaif.config imports this file)
    """The judge sections that send requests to a base_url: judge, and revise.critic when set."""
    out = [("judge", cfg.judge)]
    return out + ([("revise.critic", cfg.revise.critic)] if cfg.revise.critic else [])


def secret_urls(cfg) -> dict[str, str]:
    """Each base_url that dump_config masks (credentials in userinfo or the query), by section. `rlaif
    run` hands them to its stages in their environment, like the API key itself: never in a file
    (config.yaml, logs) nor on a command line (ps shows it to every user)."""
    return {name: j.base_url for name, j in _judges(cfg) if j.base_url and redact_url(j.base_url) != j.base_url}


def restore_secrets(cfg, env=None):
    """Put the real URLs from $RLAIF_RUN_SECRETS back where config.yaml holds their masked form (only
    there: a URL the config changed since is left as it is)."""
    raw = (os.environ if env is None else env).get(SECRETS_ENV)
    real = json.loads(raw) if raw else {}
    for name, j in _judges(cfg):
        url = real.get(name)
        if url and j.base_url == redact_url(url):
            j.base_url = url
    return cfg


def masked_urls(cfg) -> list[str]:
    """The sections whose base_url still holds credentials masked by dump_config: requests would carry
    '***' instead of the secret."""
    out = []
    for name, j in _judges(cfg):
        if j.backend == "openai" and j.base_url:
            parts = urlsplit(j.base_url)
            if parts.username == "***" or "=***" in unquote(parts.query):
                out.append(f"{name}.base_url")
    return out
