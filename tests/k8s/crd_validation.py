"""Checks a CRD schema the way the API server would, without an API server.

``structural_violations`` restates Kubernetes' structural-schema rules (apiextensions-apiserver
``schema/validation.go`` and the CRD API validation): what a real cluster would refuse at
``kubectl apply -f crds/``. ``validate`` checks a custom resource against a CRD's openAPIV3Schema with
``jsonschema``, after mapping the Kubernetes dialect onto JSON Schema: ``nullable`` adds ``null``,
``x-kubernetes-int-or-string`` means integer or string, and an object that does not preserve unknown
fields rejects them (``kubectl``'s default strict field validation does the same; without it the API
server silently prunes them, which for a job is just as wrong). ``prune`` and ``admission`` do what
the API server does before storing a custom resource (prune, then validate); the test API server
(``kube_emulator``'s ``schemas``) uses them. ``x-kubernetes-validations`` rules are evaluated with a
real CEL implementation (cel-python), transition rules (``oldSelf``) only on an update and only where
the old object has the field, as the API server does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import celpy
import jsonschema

Schema = dict[str, Any]

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"

# JSONSchemaProps' fields: anything else is an unknown field of the CRD itself.
_KNOWN_KEYS = frozenset(
    {
        "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum", "minimum",
        "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "multipleOf",
        "enum", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not",
        "properties", "additionalProperties", "externalDocs", "example", "nullable", PRESERVE,
        "x-kubernetes-embedded-resource", INT_OR_STRING, "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
    }
)  # fmt: skip
_UNSUPPORTED = (
    "$ref",
    "$defs",
    "definitions",
    "const",
    "patternProperties",
    "dependencies",
    "additionalItems",
)
_JUNCTORS = ("allOf", "anyOf", "oneOf")
_FORBIDDEN_NESTED = (
    "type", "description", "default", "nullable", "title", "additionalProperties", "externalDocs", PRESERVE,
    INT_OR_STRING, "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
)  # fmt: skip
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


def structural_violations(schema: Schema) -> list[str]:
    """Every rule of a structural schema that ``schema`` (an openAPIV3Schema) breaks, with its path."""
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append("(root): type must be object")
    _check_structural(schema, "", "root", problems)
    return problems


def _check_structural(s: Schema, path: str, level: str, problems: list[str]) -> None:
    here = path or "(root)"
    for key in s:
        if key in _UNSUPPORTED or key not in _KNOWN_KEYS:
            problems.append(f"{here}: {key!r} is not allowed in a CRD schema")
    if s.get("uniqueItems"):
        problems.append(f"{here}: uniqueItems cannot be true")
    kind = s.get("type")
    if kind is not None and kind not in _TYPES:
        problems.append(f"{here}: type {kind!r} is not allowed")
    if kind is None and not s.get(INT_OR_STRING) and not s.get(PRESERVE):
        problems.append(f"{here}: type must not be empty for {level}")
    if PRESERVE in s and s[PRESERVE] is not True:
        problems.append(f"{here}: {PRESERVE} must be true or absent")
    if s.get(INT_OR_STRING) and s.get(PRESERVE):
        problems.append(f"{here}: int-or-string and preserve-unknown-fields exclude each other")
    if "properties" in s and "additionalProperties" in s:
        problems.append(f"{here}: properties and additionalProperties are mutually exclusive")
    if level == "root" and "additionalProperties" in s:
        problems.append(f"{here}: additionalProperties must not be used at the root")
    if kind == "array" and "items" not in s:
        problems.append(f"{here}: an array needs items")
    if "default" in s:
        try:
            jsonschema.Draft202012Validator(to_json_schema(s)).validate(s["default"])
        except jsonschema.ValidationError as e:
            problems.append(f"{here}: default does not validate: {e.message}")
    for name, sub in s.get("properties", {}).items():
        if level == "root" and name == "metadata" and set(sub) - {"type"}:
            problems.append(f"{here}.metadata: only name and generateName may be restricted")
        _check_structural(sub, f"{path}.{name}", "specified object fields", problems)
    if isinstance(s.get("additionalProperties"), dict):
        _check_structural(s["additionalProperties"], f"{path}.*", "specified object fields", problems)
    if "items" in s:
        _check_structural(s["items"], f"{path}[]", "specified array items", problems)
    for junctor in _JUNCTORS:
        for i, branch in enumerate(s.get(junctor, [])):
            _check_nested(branch, s, f"{here}.{junctor}[{i}]", problems)
    if "not" in s:
        _check_nested(s["not"], s, f"{here}.not", problems)


def _check_nested(v: Schema, structural: Schema, path: str, problems: list[str]) -> None:
    """Inside a junctor: only value checks, and only on fields the structural part declares."""
    for key in v:
        if key in _FORBIDDEN_NESTED:
            problems.append(f"{path}: {key!r} must not be set inside a logical junctor")
        elif key in _UNSUPPORTED or key not in _KNOWN_KEYS:
            problems.append(f"{path}: {key!r} is not allowed in a CRD schema")
    for name, sub in v.get("properties", {}).items():
        declared = structural.get("properties", {}).get(name)
        if declared is None:
            problems.append(f"{path}.{name}: not declared outside the junctor")
            continue
        _check_nested(sub, declared, f"{path}.{name}", problems)
    if "items" in v:
        if "items" not in structural:
            problems.append(f"{path}[]: items not declared outside the junctor")
        else:
            _check_nested(v["items"], structural["items"], f"{path}[]", problems)
    for junctor in _JUNCTORS:
        for i, branch in enumerate(v.get(junctor, [])):
            _check_nested(branch, structural, f"{path}.{junctor}[{i}]", problems)
    if "not" in v:
        _check_nested(v["not"], structural, f"{path}.not", problems)


def to_json_schema(s: Schema, *, structural: bool = True) -> Schema:
    """The Kubernetes OpenAPI dialect as JSON Schema 2020-12 (see the module docstring)."""
    out: Schema = {}
    for key, value in s.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "default", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v, structural=structural) for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value, structural=structural)
        elif key in _JUNCTORS:
            out[key] = [to_json_schema(v, structural=False) for v in value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if value is True:
                out[key] = s["minimum" if key == "exclusiveMinimum" else "maximum"]
        else:
            out[key] = value
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if s.get(exclusive) is True:
            out.pop(bound, None)
    if s.get(INT_OR_STRING):
        out["type"] = ["integer", "string"]
    if s.get("nullable") and "type" in out:
        out["type"] = [*_as_list(out["type"]), "null"]
    if s.get("nullable") and "enum" in out:
        out["enum"] = [*out["enum"], None]
    if structural and s.get("type") == "object" and "properties" in s and not s.get(PRESERVE):
        out["additionalProperties"] = False
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def version_of(crd: Schema, name: str | None = None) -> Schema:
    """The CRD's version ``name``, by default its storage version."""
    versions = crd["spec"]["versions"]
    if name is None:
        (version,) = [v for v in versions if v.get("storage")]
        return dict(version)
    found = [v for v in versions if v["name"] == name and v.get("served")]
    if not found:
        raise KeyError(f"{crd['spec']['group']}/{name} is not served")
    return dict(found[0])


def crd_schema(crd: Schema, version: str | None = None) -> Schema:
    """The openAPIV3Schema of one served version of the CRD (default: the storage version)."""
    schema: Schema = version_of(crd, version)["schema"]["openAPIV3Schema"]
    return schema


def validate(crd: Schema, resource: Schema, old: Schema | None = None) -> list[str]:
    """Why the API server would refuse ``resource`` as an instance of ``crd`` (empty when it accepts
    it), in the version its apiVersion names; ``old``: the stored object an update replaces (then the
    CEL transition rules apply)."""
    spec = crd["spec"]
    problems = []
    group, _, name = str(resource.get("apiVersion") or "").partition("/")
    served = [v["name"] for v in spec["versions"] if v.get("served")]
    if group != spec["group"] or name not in served:
        expected = " or ".join(f"{spec['group']}/{v}" for v in served)
        return [f"apiVersion: {resource.get('apiVersion')!r} is not {expected}"]
    if resource.get("kind") != spec["names"]["kind"]:
        problems.append(f"kind: {resource.get('kind')!r} is not {spec['names']['kind']!r}")
    if not (resource.get("metadata") or {}).get("name"):
        problems.append("metadata.name: required")
    schema = crd_schema(crd, name)
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message}")
    if not problems:
        _check_rules(schema, resource, MISSING if old is None else old, "", problems)
    return problems


MISSING: Any = object()  # a field the old object does not have
_CEL = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule))


def _check_rules(schema: Schema, value: Any, old: Any, path: str, problems: list[str]) -> None:
    """Evaluates the ``x-kubernetes-validations`` of ``schema`` on ``value`` and below; a transition
    rule (one naming ``oldSelf``) only where ``old`` has the field (an update of it)."""
    for rule in schema.get("x-kubernetes-validations") or []:
        transition = "oldSelf" in rule["rule"]
        if transition and old is MISSING:
            continue
        context = {"self": celpy.json_to_cel(value)}
        if transition:
            context["oldSelf"] = celpy.json_to_cel(old)
        result = _program(rule["rule"]).evaluate(context)
        if not isinstance(result, celpy.celtypes.BoolType) or not bool(result):
            problems.append(f"{path or '(root)'}: {rule.get('message') or 'failed rule: ' + rule['rule']}")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is not None:
                before = old.get(key, MISSING) if isinstance(old, dict) else MISSING
                _check_rules(sub, item, before, f"{path}.{key}" if path else key, problems)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):  # list items are not correlated: no transition rules there
            _check_rules(schema["items"], item, MISSING, f"{path}[{i}]", problems)


def prune(schema: Schema, value: Any, path: str = "", pruned: list[str] | None = None) -> Any:
    """``value`` without the fields ``schema`` does not declare, as the API server prunes a custom
    resource before storing it (apiextensions-apiserver ``pruning``): an object keeps its
    ``properties``, every key under an ``additionalProperties`` schema and, under
    ``x-kubernetes-preserve-unknown-fields``, everything; the root (and an embedded resource) keeps
    ``apiVersion``, ``kind`` and ``metadata``. The dropped fields' paths are added to ``pruned``."""
    if isinstance(value, dict):
        keep_meta = not path or bool(schema.get("x-kubernetes-embedded-resource"))
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if keep_meta and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif key in properties:
                out[key] = prune(properties[key], item, where, pruned)
            elif isinstance(additional, dict):
                out[key] = prune(additional, item, where, pruned)
            elif schema.get(PRESERVE) or additional is True:
                out[key] = item
            elif pruned is not None:
                pruned.append(where)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], item, f"{path}[{i}]", pruned) for i, item in enumerate(value)]
    return value


def apply_defaults(schema: Schema, value: Any) -> Any:
    """``value`` with the schema's ``default``s filled in where a field is absent, at every depth, as
    the API server defaults a custom resource (on create, update and read) before it validates it."""
    if isinstance(value, dict):
        out = dict(value)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            out = {
                k: apply_defaults(additional, v) if k not in (schema.get("properties") or {}) else v
                for k, v in out.items()
            }
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def admission(crd: Schema) -> Callable[..., tuple[Schema, list[str]]]:
    """What the API server does with a custom resource of ``crd`` before storing it: prune unknown
    fields (or refuse them with ``strict``, i.e. ``?fieldValidation=Strict``), apply defaults, then
    validate. Returns (the object to store, why it is invalid); for the emulator's ``schemas``."""

    def check(obj: Schema, *, strict: bool, old: Schema | None = None) -> tuple[Schema, list[str]]:
        version = str(obj.get("apiVersion") or "").partition("/")[2]
        try:
            schema = crd_schema(crd, version)
        except KeyError:
            return obj, validate(crd, obj)
        stored = apply_defaults(schema, obj if strict else prune(schema, obj))
        return stored, validate(crd, stored, old)

    return check
