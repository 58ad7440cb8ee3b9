"""snake_case <-> camelCase for the StreamingJob spec: the job model's field names as the API conventions
want them in a custom resource (``checkpoint_interval_ms`` -> ``checkpointIntervalMs``).

The job model (and the REST body) keep snake_case; ``v1alpha2`` of the CRD is camelCase throughout. Both
directions are one walk (``rename``) along the *snake_case* structural schema (``crds.py`` builds it from
the pydantic models), so only keys the schema declares as fields are renamed: keys of maps
(``additionalProperties``) and of open nodes (a ``map`` transformation's output fields, a connector's
extra settings) are user data and stay as written, at any depth. ``camel_schema`` derives the camelCase
schema from the same schema, so the CRD and the conversion cannot disagree. Pure: dicts in, dicts out.
"""

from __future__ import annotations

import re
from typing import Any, Literal

Schema = dict[str, Any]
Direction = Literal["camel", "snake"]


class CasingError(ValueError):
    """Two field names of one object would get the same camelCase name."""


def camel(name: str) -> str:
    """``checkpoint_interval_ms`` -> ``checkpointIntervalMs``; a name without ``_`` is kept."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _names(props: Schema, path: str) -> dict[str, str]:
    """snake field name -> camelCase name of one object's properties, refusing collisions."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key in props:
        new = camel(key)
        if new in seen and seen[new] != key:
            raise CasingError(f"{path}: {seen[new]!r} and {key!r} both become {new!r}")
        seen[new] = key
        out[key] = new
    return out


def camel_schema(schema: Any, path: str = "(root)") -> Any:
    """The same structural schema with every declared field name in camelCase: ``properties`` keys and
    the names in ``required`` and ``x-kubernetes-list-map-keys``, also inside the value-only
    ``oneOf``/``not`` branches of tagged unions (``camel`` is a function of the name alone)."""
    if isinstance(schema, list):
        return [camel_schema(n, path) for n in schema]
    if not isinstance(schema, dict):
        return schema
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            names = _names(value, path)
            out[key] = {names[k]: camel_schema(v, f"{path}.{k}") for k, v in value.items()}
        elif key in ("required", "x-kubernetes-list-map-keys") and isinstance(value, list):
            out[key] = [camel(k) for k in value]
        elif key == "default":  # a nested model's default is an object with the model's field names
            out[key] = rename(value, schema, "camel")
        elif isinstance(value, dict | list) and key not in ("enum", "x-kubernetes-validations"):
            out[key] = camel_schema(value, path)
        else:
            out[key] = value
    return out


def rename(value: Any, schema: Schema, to: Direction) -> Any:
    """``value`` (in the other casing) with the field names ``schema`` (snake_case) declares renamed
    ``to`` camel or snake; map keys and undeclared keys of open objects are kept. A copy."""
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [rename(v, items, to) for v in value]
    if not isinstance(value, dict):
        return value
    props: Schema = schema.get("properties") or {}
    names = _names(props, "")
    if to == "snake":
        names = {c: s for s, c in names.items()}
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in names:
            field = names[key]
            sub = props[field if to == "snake" else key]
            out[field] = rename(item, sub, to)
        elif isinstance(extra, dict):
            out[key] = rename(item, extra, to)
        else:
            out[key] = item  # an open object's own key, or a field no schema declares: as written
    return out


_PATH_TOKEN = re.compile(r"\[[^\]]*\]|[^.\[\]]+")


def camel_path(path: str, schema: Schema) -> str:
    """A field path in the model's names (``sources[0].config.rate_per_sec``, as validation errors
    name them) in camelCase, along ``schema`` (snake_case): map keys in it stay as they are."""
    node: Any = schema
    out = ""
    for token in _PATH_TOKEN.findall(path):
        if token.startswith("["):
            out += token
            node = node.get("items") or {}
            continue
        props = node.get("properties") or {}
        if token in props:
            name, node = camel(token), props[token]
        else:
            extra = node.get("additionalProperties")
            name, node = token, extra if isinstance(extra, dict) else {}
        out += f".{name}" if out else name
    return out
