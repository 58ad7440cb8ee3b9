"""The job reference: every key of a job, every connector and step with every option, rendered from
the pydantic models that validate them (``model/config.py``, ``connectors.py``, ``transformations.py``),
so the page cannot drift from what the server accepts."""

from __future__ import annotations

import typing
from typing import Any

import markup
import orjson
from pydantic import BaseModel

from heliosdb_streaming.model import config, connectors, transformations


def _members(union: Any) -> list[type[BaseModel]]:
    """The item models of a discriminated union such as ``AnySource`` (``Annotated[A | B, ...]``)."""
    inner = typing.get_args(union)[0]
    return list(typing.get_args(inner))


def _settings(item: type[BaseModel]) -> tuple[str, type[BaseModel]]:
    tag = item.model_fields["type"].default
    settings = item.model_fields["config"].annotation
    assert isinstance(settings, type) and issubclass(settings, BaseModel), item
    return str(tag), settings


def _type_text(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if "enum" in target:
            return " \\| ".join(f"`{v}`" for v in target["enum"])
        return f"object ({name})"
    if "const" in schema:
        return f"`{schema['const']}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "oneOf" in schema and "discriminator" in schema:
        return "object, by `type`: " + ", ".join(f"`{tag}`" for tag in schema["discriminator"]["mapping"])
    if "anyOf" in schema:
        parts = [_type_text(s, defs) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(parts))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}), defs)}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type_text(schema['additionalProperties'], defs)}"
    return str(kind)


_BOUNDS = (
    ("minimum", ">= {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "<= {}"),
    ("minLength", "length >= {}"),
    ("maxLength", "length <= {}"),
    ("minItems", "items >= {}"),
    ("maxItems", "items <= {}"),
    ("minProperties", "entries >= {}"),
)


def _bounds(schema: dict[str, Any]) -> list[str]:
    found = [
        text.format(f"{schema[key]:,}" if isinstance(schema[key], int) else schema[key])
        for key, text in _BOUNDS
        if key in schema
    ]
    for alternative in schema.get("anyOf", []):
        found += _bounds(alternative)
    return found


def _cell(text: object) -> str:
    """One line of a table cell: pipes, HTML and emphasis characters of the source text escaped."""
    return markup.cell(text)


def _default(model: type[BaseModel], name: str, prop: dict[str, Any]) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "all defaults" if isinstance(value, BaseModel) else f"`{orjson.dumps(value).decode()}`"
    value = prop.get("default", field.default)
    if value is None:
        return "absent"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def options_table(model: type[BaseModel]) -> str:
    """A Markdown table of ``model``'s keys: name, type, default or required, bounds, description."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    by_alias = {(f.alias or n): n for n, f in model.model_fields.items()}
    rows = ["| key | type | default | rules | meaning |", "|---|---|---|---|---|"]
    for key, prop in schema.get("properties", {}).items():
        name = by_alias.get(key, key)
        description = prop.get("description") or model.model_fields[name].description or ""
        if "$ref" in prop and not description:
            description = defs.get(prop["$ref"].rsplit("/", 1)[-1], {}).get("description", "")
        rows.append(
            f"| `{key}` | {_type_text(prop, defs)} | {_default(model, name, prop)} | "
            f"{_cell(', '.join(_bounds(prop)))} | {_cell(description)} |"
        )
    if len(rows) == 2:
        return "No options.\n"
    return "\n".join(rows) + "\n"


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


def _section(title: str, kind: str, union: Any) -> list[str]:
    out = [f"## {title}", ""]
    for item in _members(union):
        tag, settings = _settings(item)
        out += [f"### `{tag}` {{#{kind}-{tag.replace('_', '-')}}}", ""]
        if _doc(settings):
            out += [_doc(settings), ""]
        out += [f'`{{"type": "{tag}", "config": {{...}}}}` with `config`:', "", options_table(settings)]
    return out


def render() -> str:
    """The whole generated part of the job reference page."""
    out = [
        "## The job document {#job}",
        "",
        "The body of `POST /api/v1/jobs`, a file for `helios run`, or `JobConfig.from_dict(body)`:",
        "",
        options_table(config.JobSubmitRequest),
        "## `config` {#config}",
        "",
        options_table(config.JobSettings),
        "### `restart_strategy` as an object {#restart-strategy}",
        "",
        "A name (`none`, `fixed_delay`, `exponential_backoff`) takes the defaults below; "
        "an object sets them:",
        "",
        options_table(config.RestartStrategy),
        "### `repartition` {#repartition}",
        "",
        options_table(config.RepartitionSettings),
    ]
    out += _section("Sources", "source", connectors.AnySource)
    out += _section("Transformations", "step", transformations.AnyTransformation)
    out += _section("Sinks", "sink", connectors.AnySink)
    return "\n".join(out) + "\n"
