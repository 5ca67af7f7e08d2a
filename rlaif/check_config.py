"""The config half of `rlaif check`: every schema error as its own line, and the rest still checked.

`load_config` stops at the first invalid file and reports its schema errors as one line. A check
wants every problem at once, so here each error is a line (naming the override or the file, as
load_config does), the keys at fault are dropped (their defaults stand in) and the config is
validated again, so files, keys, prices and the endpoint are checked on what remains.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from rlaif.errors import UserError

MAX_PASSES = 5  # each pass drops the keys at fault; a default never fails, so two passes are the usual


def _read(config: str | None, r) -> dict | None:
    import yaml

    if config is None:
        return {}
    p = Path(config)
    if not p.is_file():
        r.problem("config", "config", f"{p}: config file not found")
        return None
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        r.problem("config", "config", f"{p}: not valid YAML or not UTF-8: {e}".replace("\n", " "))
        return None
    if not isinstance(data, dict):
        r.problem("config", "config", f"{p}: top level must be a mapping of keys")
        return None
    return data


def _apply(data: dict, overrides: list[str], r) -> list:
    from rlaif.config import RunConfig
    from rlaif.overrides import parse_overrides, set_path

    parsed = []
    for item in overrides:  # one at a time: a bad override is its own line and the others still apply
        try:
            (key_path, value, shown), = parse_overrides(RunConfig, [item])
            set_path(data, key_path, shown, value)
            parsed.append((key_path, value, shown))
        except UserError as e:
            r.problem("config", item.partition("=")[0], str(e))
    return parsed


def _drop(data: dict, loc: tuple) -> bool:
    """Remove the value at loc (or the nearest section above it that exists); True if something went."""
    node, path = data, [str(x) for x in loc]
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            return False
        if i == len(path) - 1 or not isinstance(node[part], dict):
            del node[part]
            return True
        node = node[part]
    return False


def load_for_check(config: str | None, overrides: list[str], r):
    """The RunConfig with the keys at fault dropped (each reported), or None when none can be built."""
    from rlaif.config import RunConfig
    from rlaif.overrides import blame, describe

    data = _read(config, r)
    if data is None:
        return None
    parsed = _apply(data, overrides, r)
    where = str(config) if config else "command line"
    over = f" (applied to {config})" if config else ""  # load_config's words
    for _ in range(MAX_PASSES):
        try:
            return RunConfig.model_validate(data, context={"import_checks": True})
        except ValidationError as e:
            dropped = False
            for err in e.errors():
                by = blame(err, parsed)
                r.problem("config", ".".join(str(x) for x in err["loc"]),
                          f"{f'override {by}{over}' if by else where}: {describe(RunConfig, err)}")
                dropped |= _drop(data, err["loc"])
            if not dropped:
                return None
    return None
