"""The REST reference, rendered from ``docs/openapi.json`` at build time (no viewer, no CDN): every
route with its parameters, bodies and responses (every error status and code), then every schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import markup
import orjson

METHODS = ("get", "post", "put", "patch", "delete")


def _anchor(name: str) -> str:
    return "schema-" + name.lower()


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return str(ref).rsplit("/", 1)[-1] if ref else None


def _type(schema: dict[str, Any]) -> str:
    name = _ref_name(schema)
    if name:
        return f"[{name}](#{_anchor(name)})"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            parts = [_type(s) for s in schema[combinator] if s.get("type") != "null"]
            nullable = any(s.get("type") == "null" for s in schema[combinator])
            return " or ".join(dict.fromkeys(parts)) + (" or null" if nullable else "")
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    return str(kind) + (f" ({schema['format']})" if "format" in schema else "")


def _cell(text: object) -> str:
    """One line of a table cell: pipes, HTML and emphasis characters of the source text escaped."""
    return markup.cell(text)


def _body(content: dict[str, Any]) -> str:
    return ", ".join(f"{_type(media.get('schema', {}))} (`{kind}`)" for kind, media in content.items())


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    out = [f"### `{method.upper()} {path}` {{#{op['operationId'].lower()}}}", ""]
    if op.get("summary"):
        out += [_cell(op["summary"]) + ".", ""]
    if op.get("description"):
        out += [op["description"].strip(), ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | type | required | meaning |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            default = ""
            if "default" in schema:
                default = f" (default `{orjson.dumps(schema['default']).decode()}`)"
            out.append(
                f"| `{p['name']}` | {p['in']} | {_type(schema)} | {'yes' if p.get('required') else 'no'} | "
                f"{_cell(p.get('description'))}{default} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        out += [f"Request body ({required}): {_body(body.get('content', {}))}.", ""]
    out += ["| status | meaning | body |", "|---|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        out.append(
            f"| {status} | {_cell(response.get('description'))} | {_body(response.get('content', {}))} |"
        )
    return [*out, ""]


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#{_anchor(name)}}}", ""]
    if schema.get("description"):
        out += [_cell(schema["description"]), ""]
    if "enum" in schema:
        return [*out, "One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    props = schema.get("properties", {})
    if not props:
        return [*out, f"Type: {_type(schema)}.", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | required | meaning |", "|---|---|---|---|"]
    for field, prop in props.items():
        default = f" (default `{orjson.dumps(prop['default']).decode()}`)" if "default" in prop else ""
        out.append(
            f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} | "
            f"{_cell(prop.get('description'))}{default} |"
        )
    return [*out, ""]


def render(openapi_path: Path) -> str:
    """The generated part of the REST reference page."""
    doc = orjson.loads(openapi_path.read_bytes())
    info = doc["info"]
    out = [f"{info['description']}", "", f"OpenAPI {doc['openapi']}, API version {info['version']}.", ""]
    out += ["## Routes", ""]
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                out += _operation(path, method, item[method])
    out += ["## Schemas", ""]
    for name, schema in sorted(doc["components"]["schemas"].items()):
        out += _schema(name, schema)
    return "\n".join(out) + "\n"
