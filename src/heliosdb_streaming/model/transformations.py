"""Typed configs of every transformation type (filter, map, key_by, window, cep, python, process): a
step's ``config`` keys.

Each step of a job is ``{"type": ..., "config": {...}}``; the ``type`` picks one of the models below
(a pydantic discriminated union), so unknown types and unknown keys are rejected with their path.
Semantic checks (expressions compile, patterns parse, durations and aggregates parse) run here, at
submit; sources and sinks are in :mod:`heliosdb_streaming.model.connectors`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from heliosdb_streaming.model import expr, patterns, usercode
from heliosdb_streaming.model.connectors import StrictInt, _Strict, is_stored
from heliosdb_streaming.model.durations import MAX_DURATION_MS, format_duration_ms, parse_duration_ms

Duration = Annotated[
    str | StrictInt,
    Field(
        description="A duration: a number of milliseconds or a string like '500ms', '10s', '5m', '1h' "
        "(at most 366d)."
    ),
]
MAX_SLIDING_WINDOWS_PER_EVENT = 1_000
MAX_EXPRESSION_COST_PER_JOB = 100_000

AGGREGATE_FUNCTIONS = ("count", "sum", "avg", "min", "max")

_AGG_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*(.*?)\s*\)\s*$", re.DOTALL)
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _check_duration(
    value: str | int | None, *, allow_zero: bool = False, info: ValidationInfo | None = None
) -> str | int | None:
    if value is None:
        return None
    ms = parse_duration_ms(value)
    if ms == 0 and not allow_zero:
        raise ValueError("duration must be greater than zero")
    if ms > MAX_DURATION_MS and not (info is not None and is_stored(info)):
        raise ValueError(f"duration must be at most {format_duration_ms(MAX_DURATION_MS)}")
    return value


def _check_expression(text: str, info: ValidationInfo | None = None) -> str:
    if info is not None and is_stored(info):
        return text
    try:
        expr.validate_expression(text)
    except expr.ExpressionError as e:
        raise ValueError(f"invalid expression: {e}") from None
    return text


def expression_costs(step: Any) -> list[tuple[str, int]]:
    """``(path within the step, nodes)`` of every expression of a transformation (validated ones)."""
    c = step.config
    texts: list[tuple[str, str]] = []
    if isinstance(c, FilterSettings):
        texts = [("config.condition", c.condition)]
    elif isinstance(c, KeyBySettings):
        texts = [("config.key", c.key)]
    elif isinstance(c, MapSettings):
        texts = [(f"config.fields.{k}", v) for k, v in c.fields.items()]
    elif isinstance(c, WindowSettings | CepSettings | ProcessSettings):
        texts = [("config.key", c.key)] if c.key else []
        if isinstance(c, CepSettings):
            texts += [(f"config.define.{k}", v) for k, v in c.define.items()]
    out = []
    for path, text in texts:
        with contextlib.suppress(expr.ExpressionError):  # reported by the field's own validator
            out.append((path, expr.expression_cost(text)))
    return out


def parse_aggregate(text: str) -> tuple[str, str | None]:
    """``"sum(amount)"`` -> ``("sum", "amount")``; ``"count(*)"`` -> ``("count", None)``.

    Functions: count, sum, avg, min, max (case-insensitive). The field is a name or a dotted path
    into nested objects (``payload.amount``); ``*`` only with count. Raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError(f"aggregate must be a string like 'sum(amount)', got {type(text).__name__}")
    m = _AGG_RE.match(text)
    if m is None:
        raise ValueError(
            f"invalid aggregate {text!r}: expected function(field), e.g. 'sum(amount)' or 'count(*)'"
        )
    func = m.group(1).lower()
    arg = m.group(2)
    if func not in AGGREGATE_FUNCTIONS:
        raise ValueError(
            f"unknown aggregate function {m.group(1)!r} in {text!r}: use count, sum, avg, min or max"
        )
    if arg == "*":
        if func != "count":
            raise ValueError(f"invalid aggregate {text!r}: '*' is only allowed in count(*)")
        return ("count", None)
    if not arg:
        hint = "count(*) or count(field)" if func == "count" else f"{func}(field)"
        raise ValueError(f"invalid aggregate {text!r}: missing field, use {hint}")
    if not _FIELD_RE.match(arg):
        raise ValueError(
            f"invalid field {arg!r} in aggregate {text!r}: "
            "use a field name or a dotted path like 'payload.amount'"
        )
    return (func, arg)


class FilterSettings(_Strict):
    condition: str = Field(min_length=1, description="A condition in the expression language")

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str, info: ValidationInfo) -> str:
        return _check_expression(v, info)


class MapSettings(_Strict):
    fields: dict[str, str] = Field(default_factory=dict, description="output field -> expression")
    drop: list[str] = Field(default_factory=list)

    @field_validator("fields")
    @classmethod
    def _fields_compile(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        problems = []
        for name, text in v.items():
            if not name:
                problems.append("empty field name")
                continue
            if is_stored(info):
                continue
            try:
                expr.validate_expression(text)
            except expr.ExpressionError as e:
                problems.append(f"{name}: {e}")
        if problems:
            raise ValueError("invalid expression " + "; ".join(problems))
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.fields and not self.drop:
            raise ValueError("map needs 'fields' or 'drop'")
        return self


class KeyBySettings(_Strict):
    key: str = Field(min_length=1, description="An expression giving the key, usually a field name")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str, info: ValidationInfo) -> str:
        return _check_expression(v, info)


class WindowSettings(_Strict):
    kind: Literal["tumbling", "sliding", "session"] = "tumbling"
    size: Duration | None = None
    slide: Duration | None = None
    gap: Duration | None = None
    time: Literal["event", "processing"] = "event"
    time_field: str = "timestamp"
    allowed_lateness: Duration = 0
    max_out_of_orderness: Duration = 0
    key: str | None = Field(default=None, description="Key expression; defaults to the key_by key")
    aggregates: dict[str, str] = Field(min_length=1, description="output name -> count(*)|sum(f)|...")

    @field_validator("size", "slide", "gap")
    @classmethod
    def _positive(cls, v: str | int | None, info: ValidationInfo) -> str | int | None:
        return _check_duration(v, info=info)

    @field_validator("allowed_lateness", "max_out_of_orderness")
    @classmethod
    def _non_negative(cls, v: str | int, info: ValidationInfo) -> str | int:
        _check_duration(v, allow_zero=True, info=info)
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_expression(v, info)

    @field_validator("aggregates")
    @classmethod
    def _aggregates(cls, v: dict[str, str]) -> dict[str, str]:
        problems = []
        for name, text in v.items():
            try:
                parse_aggregate(text)
            except ValueError as e:
                problems.append(f"{name}: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> Self:
        if self.kind in ("tumbling", "sliding") and self.size is None:
            raise ValueError(f"a {self.kind} window needs 'size'")
        if self.kind == "sliding":
            if self.slide is None:
                raise ValueError("a sliding window needs 'slide'")
            if self.size is not None and parse_duration_ms(self.slide) > parse_duration_ms(self.size):
                raise ValueError("'slide' must not be larger than 'size'")
            if (
                not is_stored(info)
                and self.size is not None
                and parse_duration_ms(self.size)
                > (MAX_SLIDING_WINDOWS_PER_EVENT * parse_duration_ms(self.slide))
            ):
                raise ValueError(
                    f"a sliding window of {self.size} every {self.slide} puts each event into more than "
                    f"{MAX_SLIDING_WINDOWS_PER_EVENT} windows: make 'slide' at least 'size' / "
                    f"{MAX_SLIDING_WINDOWS_PER_EVENT}"
                )
        if self.kind == "session" and self.gap is None:
            raise ValueError("a session window needs 'gap'")
        return self


class CepSettings(_Strict):
    pattern: str = Field(min_length=1, description="Variables with quantifiers, e.g. 'A B+ C'")
    define: dict[str, str] = Field(default_factory=dict, description="variable -> condition")
    key: str | None = Field(default=None, description="Key expression; defaults to the key_by key")
    window: Duration | None = Field(default=None, description="Max time from first to last event")
    time_field: str = "timestamp"
    contiguity: Literal["strict", "relaxed"] = "strict"
    after_match: Literal["skip_past_last_row", "skip_to_next_row"] = "skip_past_last_row"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str, info: ValidationInfo) -> str:
        if is_stored(info):
            return v
        try:
            patterns.parse_pattern(v)
        except patterns.PatternError as e:
            raise ValueError(f"invalid pattern: {e}") from None
        return v

    @field_validator("define")
    @classmethod
    def _define(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        problems = []
        for name, text in v.items():
            if is_stored(info):
                break
            try:
                expr.validate_expression(text)
            except expr.ExpressionError as e:
                problems.append(f"{name}: {e}")
        if problems:
            raise ValueError("invalid condition " + "; ".join(problems))
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | int | None, info: ValidationInfo) -> str | int | None:
        return _check_duration(v, info=info)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_expression(v, info)

    @model_validator(mode="after")
    def _defined_variables_exist(self, info: ValidationInfo) -> Self:
        if is_stored(info):
            return self
        try:
            variables = set(patterns.parse_pattern(self.pattern).variables)
        except patterns.PatternError:
            return self
        unknown = sorted(set(self.define) - variables)
        if unknown:
            raise ValueError(f"define names variables not in the pattern: {', '.join(unknown)}")
        return self


PythonKind = Literal["map", "filter", "flat_map"]


class PythonSettings(_Strict):
    """A user function applied to each record: ``map`` returns the new record (None drops it), ``filter``
    keeps the record when the result is truthy, ``flat_map`` returns an iterable of records."""

    function: str = Field(
        min_length=1,
        description="The function, 'package.module:name', imported by the workers from their environment",
        examples=["acme.fraud.scoring:score"],
        json_schema_extra={"pattern": usercode.REFERENCE_PATTERN},
    )
    kind: PythonKind = Field(default="map", description="map (None drops), filter (truthy keeps), flat_map")

    @field_validator("function")
    @classmethod
    def _reference(cls, v: str, info: ValidationInfo) -> str:
        return v if is_stored(info) else str(usercode.parse_reference(v))


class ProcessSettings(_Strict):
    """A keyed process function: a ``KeyedProcessFunction`` subclass run per task, with per-key state
    and timers. Its key is ``key``, else the key of the ``key_by`` before it (one of them is needed)."""

    function: str = Field(
        min_length=1,
        description="The KeyedProcessFunction subclass, 'package.module:Class', imported by the workers",
        examples=["acme.fraud.rules:LargeSpend"],
    )
    key: str | None = Field(default=None, description="Key expression; defaults to the key_by key")
    time_field: str = Field(
        default="timestamp",
        description="The field holding an event's time (ctx.timestamp); events without it do not move "
        "the watermark",
    )
    max_out_of_orderness: Duration = Field(
        default=0, description="How far behind the latest event time the watermark stays"
    )

    @field_validator("function")
    @classmethod
    def _reference(cls, v: str, info: ValidationInfo) -> str:
        return v if is_stored(info) else str(usercode.parse_reference(v))

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_expression(v, info)

    @field_validator("max_out_of_orderness")
    @classmethod
    def _non_negative(cls, v: str | int, info: ValidationInfo) -> str | int:
        _check_duration(v, allow_zero=True, info=info)
        return v


def process_key_errors(transformations: list[Any]) -> list[tuple[int, str]]:
    """``(index, message)`` of every process step that has no key: neither its own nor a key_by's."""
    problems: list[tuple[int, str]] = []
    keyed = False
    for i, step in enumerate(transformations):
        if isinstance(step.config, KeyBySettings):
            keyed = True
        elif isinstance(step.config, ProcessSettings) and step.config.key is None and not keyed:
            problems.append(
                (i, "a process step needs a key: set 'key' (e.g. \"card_id\") or put a key_by step before it")
            )
    return problems


class TransformationConfig(_Strict):
    """One step of a job. Build with ``TransformationConfig.filter("amount > 10")`` and friends."""

    type: str
    config: Any

    @staticmethod
    def filter(condition: str) -> Any:
        return FilterTransformation(config=FilterSettings(condition=condition))

    @staticmethod
    def map(fields: dict[str, str] | None = None, drop: list[str] | None = None) -> Any:
        return MapTransformation(config=MapSettings(fields=fields or {}, drop=drop or []))

    @staticmethod
    def key_by(key: str) -> Any:
        return KeyByTransformation(config=KeyBySettings(key=key))

    @staticmethod
    def window(**kw: Any) -> Any:
        return WindowTransformation(config=WindowSettings.model_validate(kw))

    @staticmethod
    def cep(pattern: str, **kw: Any) -> Any:
        return CepTransformation(config=CepSettings.model_validate({"pattern": pattern, **kw}))

    @staticmethod
    def python(fn: Any, kind: PythonKind = "map") -> Any:
        """A python step running ``fn``: a module-level function (stored as its ``module:qualname``) or
        that reference as a string. UserCodeError for lambdas, closures and ``__main__`` functions."""
        return PythonTransformation(config=PythonSettings(function=usercode.reference_of(fn), kind=kind))

    @staticmethod
    def process(function: Any, key: str | None = None, **kw: Any) -> Any:
        """A process step running ``function``: a ``KeyedProcessFunction`` subclass defined at module level
        (stored as its ``module:qualname``) or that reference as a string. UserCodeError for classes
        defined in a function or in ``__main__``; ``key`` defaults to the key_by key."""
        settings = {"function": usercode.reference_of(function), "key": key, **kw}
        return ProcessTransformation(config=ProcessSettings.model_validate(settings))


class FilterTransformation(TransformationConfig):
    type: Literal["filter"] = "filter"
    config: FilterSettings


class MapTransformation(TransformationConfig):
    type: Literal["map"] = "map"
    config: MapSettings


class KeyByTransformation(TransformationConfig):
    type: Literal["key_by"] = "key_by"
    config: KeyBySettings


class WindowTransformation(TransformationConfig):
    type: Literal["window"] = "window"
    config: WindowSettings


class CepTransformation(TransformationConfig):
    type: Literal["cep"] = "cep"
    config: CepSettings


class PythonTransformation(TransformationConfig):
    type: Literal["python"] = "python"
    config: PythonSettings


class ProcessTransformation(TransformationConfig):
    type: Literal["process"] = "process"
    config: ProcessSettings


AnyTransformation = Annotated[
    FilterTransformation
    | MapTransformation
    | KeyByTransformation
    | WindowTransformation
    | CepTransformation
    | PythonTransformation
    | ProcessTransformation,
    Field(discriminator="type"),
]
