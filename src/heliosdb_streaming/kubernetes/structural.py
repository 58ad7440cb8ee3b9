"""Turns pydantic's JSON schema into a Kubernetes *structural* schema, so a CRD validates the job model.

Kubernetes accepts only a subset of OpenAPI v3 in a CRD (a "structural schema"): no ``$ref``, no
``const``, a ``type`` on every node (unless it is int-or-string or preserves unknown fields), and inside
``anyOf``/``oneOf``/``not`` only value checks on fields the outside already declares, with no ``type``,
``description``, ``default``, ``nullable`` or ``additionalProperties``. ``from_json_schema`` maps what
our models use onto that subset and raises ``StructuralSchemaError`` on anything it cannot express, so a
model change that Kubernetes could not take fails the generator (and its test) instead of the cluster:

- A model with ``extra="allow"`` keeps its declared properties typed and preserves the others.
- ``$ref`` is inlined; ``const`` becomes a one-value ``enum``; ``X | None`` becomes ``nullable: true``;
  ``str | int`` becomes ``x-kubernetes-int-or-string``; ``additionalProperties: false`` is dropped
  (the API server prunes, and with ``kubectl``'s default strict field validation rejects, unknown fields).
- A discriminated union (the ``{"type": ..., "config": {...}}`` items) becomes one object whose
  structural part is the merge of every variant, with ``type`` an enum of the tags, plus a ``oneOf``
  with one value-only branch per variant: the tag, that variant's required keys and value limits, and
  a ``not`` that rejects keys belonging only to other variants. Unknown tags, unknown keys and bad
  values are therefore rejected by the API server itself, like the REST API rejects them.
- A bare-name-or-object field (the restart strategy) preserves unknown fields (the only way to leave its
  type open); the names are checked with ``pattern`` (it only applies to strings) and the object form
  by its ``properties`` (they only apply to objects).
- Defaults are kept only where they cannot leak into another variant: never inside a union or an
  open (preserve-unknown) node.

Pure: dicts in, dicts out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

JsonSchema = dict[str, Any]

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"

# Value checks: allowed both in the structural part and inside logical junctors.
_VALUE_KEYS = (
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
)
# What the structural part must agree on when variants of a union are merged.
_GENERIC_KEYS = ("type", INT_OR_STRING, PRESERVE)
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean"})


class StructuralSchemaError(ValueError):
    """The JSON schema uses a construct a Kubernetes structural schema cannot express."""


def from_json_schema(schema: JsonSchema) -> JsonSchema:
    """A structural schema for ``schema`` (pydantic's ``model_json_schema()`` output, with ``$defs``)."""
    return _Converter(schema.get("$defs", {})).node(schema, defaults=True)


class _Converter:
    def __init__(self, defs: dict[str, JsonSchema]) -> None:
        self._defs = defs

    def resolve(self, node: JsonSchema) -> JsonSchema:
        """Inlines ``$ref``; keys next to the reference (``default``, ``description``) win."""
        while "$ref" in node:
            ref = node["$ref"]
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/$defs/") or name not in self._defs:
                raise StructuralSchemaError(f"unresolvable reference {ref!r}")
            node = {**self._defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def node(self, raw: JsonSchema, *, defaults: bool) -> JsonSchema:
        s = self.resolve(raw)
        if "anyOf" in s:
            return self._any_of(s, defaults=defaults)
        if "oneOf" in s:
            return self._tagged_union(s)
        if "allOf" in s:
            raise StructuralSchemaError("allOf is not used by the job model and is not supported here")
        out: JsonSchema = {}
        if "const" in s:
            s = {**s, "enum": [s["const"]]}
            s.setdefault("type", _json_type(s["const"]))
        kind = s.get("type")
        if kind is None:
            return _annotated({PRESERVE: True}, s, defaults=False)
        if not isinstance(kind, str) or (kind not in _SCALAR_TYPES and kind not in ("object", "array")):
            raise StructuralSchemaError(f"unsupported type {kind!r}")
        out["type"] = kind
        out = _annotated(out, s, defaults=defaults)
        if kind == "object":
            out.update(self._object_members(s, defaults=defaults))
        elif kind == "array":
            if "items" not in s:
                raise StructuralSchemaError("an array needs 'items'")
            out["items"] = self.node(s["items"], defaults=defaults)
        return out

    def _object_members(self, s: JsonSchema, *, defaults: bool) -> JsonSchema:
        out: JsonSchema = {}
        props = s.get("properties")
        extra = s.get("additionalProperties")
        if props:
            out["properties"] = {k: self.node(v, defaults=defaults) for k, v in props.items()}
            if extra is True:  # ``extra="allow"``: declared fields typed, the others kept as given
                out[PRESERVE] = True
        elif isinstance(extra, dict):
            out["additionalProperties"] = self.node(extra, defaults=defaults)
        elif extra is True:
            out[PRESERVE] = True
        return out

    def _any_of(self, s: JsonSchema, *, defaults: bool) -> JsonSchema:
        branches = list(self._flatten_any_of(s["anyOf"]))
        nullable = any(b.get("type") == "null" for b in branches)
        rest = [b for b in branches if b.get("type") != "null"]
        outer = {k: v for k, v in s.items() if k != "anyOf"}
        if "description" not in outer:  # e.g. ``Duration | None``: the alias carries the description
            described = [self.resolve(b).get("description") for b in s["anyOf"]]
            outer["description"] = next((d for d in described if d), None)
        kinds = {b.get("type") for b in rest}
        if len(rest) == 1:
            out = self.node({**rest[0], **outer}, defaults=defaults)
        elif kinds == {"string", "integer"} and len(rest) == 2:
            out = _annotated({INT_OR_STRING: True}, outer, defaults=defaults)
        elif kinds == {"string", "object"} and len(rest) == 2:
            text = next(b for b in rest if b.get("type") == "string")
            obj = next(b for b in rest if b.get("type") == "object")
            out = self._name_or_object(text, obj, outer)
        elif kinds == {"string", "array"} and len(rest) == 2:  # a list or its comma-separated text
            out = _annotated({PRESERVE: True}, outer, defaults=False)
        else:
            raise StructuralSchemaError(f"cannot express anyOf of {sorted(map(str, kinds))} structurally")
        if nullable:
            out["nullable"] = True
            out.pop("default", None)
        return out

    def _flatten_any_of(self, branches: Iterable[JsonSchema]) -> Iterable[JsonSchema]:
        for b in branches:
            b = self.resolve(b)
            if "anyOf" in b:
                yield from self._flatten_any_of(b["anyOf"])
            else:
                yield b

    def _name_or_object(self, text: JsonSchema, obj: JsonSchema, outer: JsonSchema) -> JsonSchema:
        out: JsonSchema = _annotated({PRESERVE: True}, {**obj, **outer}, defaults=False)
        if "enum" in text:
            out["pattern"] = "^(" + "|".join(re.escape(str(v)) for v in text["enum"]) + ")$"
        members = self._object_members(obj, defaults=False)
        if "additionalProperties" in members:
            raise StructuralSchemaError("a name-or-object field needs named properties")
        out.update({k: v for k, v in members.items() if k != PRESERVE})
        if obj.get("required"):
            out["required"] = list(obj["required"])
        return out

    def _tagged_union(self, s: JsonSchema) -> JsonSchema:
        tag = (s.get("discriminator") or {}).get("propertyName")
        if not tag:
            raise StructuralSchemaError("oneOf is only supported as a pydantic discriminated union")
        variants = [self.node(b, defaults=False) for b in s["oneOf"]]
        tags: list[Any] = []
        for v in variants:
            enum = v.get("properties", {}).get(tag, {}).get("enum")
            if v.get("type") != "object" or not enum or len(enum) != 1:
                raise StructuralSchemaError(f"every variant needs a single-valued {tag!r}")
            tags.append(enum[0])
        merged = _merge(variants)
        merged["properties"][tag] = {
            **merged["properties"][tag],
            "enum": tags,
            "description": f"Which kind of item this is: {', '.join(map(str, tags))}",
        }
        merged["required"] = [tag]
        merged["oneOf"] = [_value_only(v, merged) for v in variants]
        return merged


def _annotated(out: JsonSchema, s: JsonSchema, *, defaults: bool) -> JsonSchema:
    """Copies the description, value checks and (where allowed) a non-null default onto ``out``."""
    if s.get("description"):
        out["description"] = s["description"]
    for key in _VALUE_KEYS:
        if key in s:
            out[key] = list(s[key]) if isinstance(s[key], list) else s[key]
    # JSON Schema 2020-12 exclusive bounds are numbers; OpenAPI v3.0 (Kubernetes) has booleans.
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in out and not isinstance(out[bound], bool):
            out[plain] = out.pop(bound)
            out[bound] = True
    default = s.get("default")
    if defaults and default is not None and ("enum" not in s or default in s["enum"]):
        out["default"] = default
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise StructuralSchemaError(f"unsupported const {value!r}")


def _merge(nodes: list[JsonSchema]) -> JsonSchema:
    """The structural part shared by every variant: same generic shape, no value checks, no defaults."""
    first = nodes[0]
    for key in _GENERIC_KEYS:
        if len({repr(n.get(key)) for n in nodes}) > 1:
            raise StructuralSchemaError(f"variants disagree on {key!r}: {[n.get(key) for n in nodes]}")
    out: JsonSchema = {k: first[k] for k in _GENERIC_KEYS if k in first}
    descriptions = {n.get("description") for n in nodes}
    if len(descriptions) == 1 and first.get("description"):
        out["description"] = first["description"]
    if any(n.get("nullable") for n in nodes):
        out["nullable"] = True
    if any("properties" in n for n in nodes) or first.get("type") == "object":
        keys: dict[str, list[JsonSchema]] = {}
        for n in nodes:
            for k, v in n.get("properties", {}).items():
                keys.setdefault(k, []).append(v)
        if keys:
            out["properties"] = {k: _merge(vs) for k, vs in keys.items()}
    items = [n["items"] for n in nodes if "items" in n]
    if items:
        out["items"] = _merge(items)
    extra = [n["additionalProperties"] for n in nodes if "additionalProperties" in n]
    if extra:
        if "properties" in out:
            raise StructuralSchemaError("variants mix a map and an object under one key")
        out["additionalProperties"] = _merge(extra)
    return out


def _value_only(node: JsonSchema, merged: JsonSchema) -> JsonSchema:
    """``node``'s value checks in the form allowed inside ``oneOf``, with keys foreign to it forbidden."""
    out: JsonSchema = {k: node[k] for k in _VALUE_KEYS if k in node}
    merged_props: JsonSchema = merged.get("properties", {})
    if "properties" in node or merged_props:
        own = node.get("properties", {})
        props = {k: _value_only(v, merged_props[k]) for k, v in own.items()}
        props = {k: v for k, v in props.items() if v}
        if props:
            out["properties"] = props
        foreign = [k for k in merged_props if k not in own]
        if len(foreign) == 1:
            out["not"] = {"required": foreign}
        elif foreign:
            out["not"] = {"anyOf": [{"required": [k]} for k in foreign]}
    if "items" in node:
        items = _value_only(node["items"], merged["items"])
        if items:
            out["items"] = items
    return out
