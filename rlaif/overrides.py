"""`key.sub=value` overrides along the config schema, and validation errors that name their source.

A path follows the schema: past a dict field with plain values (judge.prices: model -> [in, out])
the rest of the key is one dict key, so model names keep their dots; a quoted part is one part
(`judge.prices."o4-mini.2025"`). An error names the override that set the key, else the file, and
a misspelt key gets the nearest field name of its section (difflib).
"""
from __future__ import annotations

from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from rlaif.errors import UserError


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`JudgeConfig | None` -> JudgeConfig), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, type(int | None)):
        return next((m for a in get_args(annotation) if (m := _model_of(a))), None)
    return None


def _split_key(key: str) -> list[str]:
    """`judge.prices."gpt-4.1-mini"` -> judge, prices, gpt-4.1-mini: a quoted part is one part."""
    parts, buf, quoted = [], "", False
    for ch in key:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(buf)
            buf = ""
        elif ch.isspace() and not quoted:
            raise ValueError(key)
        else:
            buf += ch
    parts.append(buf)
    if quoted or not all(parts):
        raise ValueError(key)
    return parts


def _resolve(root: type[BaseModel], parts: list[str]) -> list[str]:
    """The path along the schema. Past a dict field whose values are plain (judge.prices: model ->
    [in, out]) the rest of the path is one key, so model names keep their dots; a dict of sections
    (evaluate.checks: name -> check) takes one part as the key and goes on into the section."""
    model: type[BaseModel] | None = root
    out, i = [], 0
    while i < len(parts):
        out.append(parts[i])
        field = model.model_fields.get(parts[i]) if model else None
        i += 1
        model = _model_of(field.annotation) if field else None
        if field is not None and model is None and get_origin(field.annotation) is dict and i < len(parts):
            value_model = _model_of(get_args(field.annotation)[1])
            if value_model is None:
                out.append(".".join(parts[i:]))
                break
            out.append(parts[i])
            i, model = i + 1, value_model
    return out


def set_path(data: dict, path: list[str], item: str, value: Any) -> None:
    *parents, leaf = path
    node = data
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"override {item}: {p} is not a section")
        node = nxt
    node[leaf] = value


def parse_overrides(root: type[BaseModel], items: list[str]) -> list[tuple[list[str], Any, str]]:
    """(path along the schema, YAML value, the override as written) for each `key.sub=value`."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        try:
            parts = _split_key(key) if sep and key else None
        except ValueError:
            parts = None
        if parts is None:
            raise UserError(f"override {item!r}: expected key.sub=value, e.g. generate.n=8 "
                            '(quote a key that has dots: judge.prices."gpt-4.1-mini"=[0.4, 1.6])')
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:  # e.g. [Is it short?] : a ? inside a flow list needs quotes
            where = f" (column {e.problem_mark.column + 1})" if getattr(e, "problem_mark", None) else ""
            raise UserError(f"override {item!r}: the value is not valid YAML{where}: "
                            f"{getattr(e, 'problem', None) or e}; quote it, e.g. "
                            f"""'{key}=["text with ? or :", "more"]'""") from None
        out.append((_resolve(root, parts), value, item))
    return out


def _section(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model of the section at loc (a path of field names and dict keys), or None."""
    model: type[BaseModel] | None = root
    i = 0
    while i < len(loc):
        field = model.model_fields.get(str(loc[i])) if model else None
        if field is None:
            return None
        model, i = _model_of(field.annotation), i + 1
        if model is None and get_origin(field.annotation) is dict:  # the next part is a key of the dict
            model, i = _model_of(get_args(field.annotation)[1]), i + 1
    return model


def _suggest(root: type[BaseModel], loc: tuple) -> str:
    """"; did you mean generate.temperature?" for a misspelt key, from its section's own field names."""
    import difflib

    model = _section(root, loc[:-1])
    if model is None:
        return ""
    names = list(model.model_fields) + [f.alias for f in model.model_fields.values() if f.alias]
    near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    prefix = "".join(f"{x}." for x in loc[:-1])
    return f"; did you mean {prefix}{near[0]}?" if near else ""


def describe(root: type[BaseModel], err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key{_suggest(root, err['loc'])}"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    got = err.get("input")  # a whole section (a check across its keys) is not echoed: the message says what
    return f"{loc}: {err['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def _shown(item: str) -> str:
    """An override as written, with a URL's credentials masked: error lines end up in logs."""
    key, _, value = item.partition("=")
    if "://" not in value:
        return item
    from rlaif.credentials import redact_url

    return f"{key}={redact_url(value)}"


def blame(err: dict, overrides: list[tuple[list[str], Any, str]]) -> str | None:
    """The override(s) an error comes from: the last one that set its key (or a section above it), else
    every one under the section a section-wide check names; None: the file's own value."""
    loc = [str(x) for x in err["loc"]]
    exact = [item for path, _, item in overrides if loc[:len(path)] == path]
    if exact:
        return _shown(exact[-1])
    under = [_shown(item) for path, _, item in overrides if path[:len(loc)] == loc]
    return ", ".join(under) or None
