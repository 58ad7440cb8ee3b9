"""Typed configs of every source, transformation and sink type: the contract of a job's ``config`` keys.

Each item of a job is ``{"type": ..., "config": {...}}``; the ``type`` picks one of the models below
(a pydantic discriminated union), so unknown types and unknown keys are rejected with their path.
Semantic checks (expressions compile, patterns parse, durations parse) run here too, at submit.
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from heliosdb_streaming.runtime import expr
from heliosdb_streaming.runtime.connectors.database import connection_string_problem, reserved_table_reason
from heliosdb_streaming.runtime.durations import MAX_DURATION_MS, format_duration_ms, parse_duration_ms
from heliosdb_streaming.runtime.transformations import cep as cep_logic
from heliosdb_streaming.runtime.transformations import window as window_logic

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

# A number of a job config is a JSON number, never a boolean or a string: strict in every mode.
StrictInt = Annotated[int, Strict()]
Duration = Annotated[
    str | StrictInt,
    Field(
        description="A duration: a number of milliseconds or a string like '500ms', '10s', '5m', '1h' "
        "(at most 366d)."
    ),
]
MAX_SLIDING_WINDOWS_PER_EVENT = 1_000
MAX_EXPRESSION_COST_PER_JOB = 100_000
# Validation context of a config the store already holds (it passed these checks at submit): the
# expensive and the version-dependent checks (expressions, patterns, bounds) are skipped on reload.
STORED = "stored"


def is_stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(STORED))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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
    elif isinstance(c, WindowSettings | CepSettings):
        texts = [("config.key", c.key)] if c.key else []
        if isinstance(c, CepSettings):
            texts += [(f"config.define.{k}", v) for k, v in c.define.items()]
    out = []
    for path, text in texts:
        with contextlib.suppress(expr.ExpressionError):  # reported by the field's own validator
            out.append((path, expr.expression_cost(text)))
    return out


def _split_servers(v: Any) -> Any:
    """Accepts bootstrap servers as a list or as the comma string Kafka users are used to."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def _check_servers(v: list[str]) -> list[str]:
    for server in v:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port")
    return v


# ----------------------------------------------------------------------------------------- sources


# The submitted form, which the validators below turn into a list: a host:port list or a comma string.
# The published schema says so, so that the CRD (and a real API server) accepts both forms too.
BOOTSTRAP_SERVERS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {"type": "string", "minLength": 1},
    ],
    "description": "host:port list or a comma string",
}


class KafkaSourceSettings(_Strict):
    bootstrap_servers: Annotated[list[str], WithJsonSchema(BOOTSTRAP_SERVERS_SCHEMA)] = Field(
        min_length=1, description="host:port list or a comma string"
    )
    topic: str = Field(min_length=1, max_length=249)
    group_id: str | None = Field(default=None, description="Consumer group for offset monitoring")
    start_from: Literal["earliest", "latest", "group"] = "group"
    format: Literal["json", "raw"] = "json"
    event_time_field: str | None = None

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return _split_servers(v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        return _check_servers(v)


class DatagenSourceSettings(_Strict):
    schema_: Literal["transactions"] = Field(default="transactions", alias="schema")
    rate_per_sec: float = Field(
        default=0,
        ge=0,
        le=10_000_000,
        strict=True,
        allow_inf_nan=False,
        description="0 means as fast as possible",
    )
    count: StrictInt | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Total records; unbounded when absent"
    )
    partitions: StrictInt = Field(default=1, ge=1, le=1024)
    seed: StrictInt = Field(default=0, ge=-(2**63), le=2**63 - 1)
    keys: StrictInt = Field(
        default=1000, ge=1, le=100_000_000, description="Number of distinct card_id values"
    )

    @model_validator(mode="after")
    def _every_partition_has_a_card(self) -> Self:
        if self.keys < self.partitions:
            raise ValueError(
                f"keys ({self.keys}) must be at least partitions ({self.partitions}): "
                "a card lives on one partition"
            )
        return self


class FileSourceSettings(_Strict):
    path: str = Field(min_length=1, description="A file, a directory or a glob; one split per file")
    format: Literal["json", "csv"] = "json"


class SourceConfig(_Strict):
    """One source of a job. Build with ``SourceConfig.kafka(...)``, ``.datagen(...)``, ``.file(...)``."""

    type: str
    config: Any

    @staticmethod
    def kafka(bootstrap_servers: list[str] | str, topic: str, group_id: str | None = None, **kw: Any) -> Any:
        return KafkaSource(
            config=KafkaSourceSettings.model_validate(
                {"bootstrap_servers": bootstrap_servers, "topic": topic, "group_id": group_id, **kw}
            )
        )

    @staticmethod
    def datagen(**kw: Any) -> Any:
        return DatagenSource(config=DatagenSourceSettings.model_validate(kw))

    @staticmethod
    def file(path: str, **kw: Any) -> Any:
        return FileSource(config=FileSourceSettings.model_validate({"path": path, **kw}))


class KafkaSource(SourceConfig):
    type: Literal["kafka"] = "kafka"
    config: KafkaSourceSettings


class DatagenSource(SourceConfig):
    type: Literal["datagen"] = "datagen"
    config: DatagenSourceSettings = Field(default_factory=DatagenSourceSettings)


class FileSource(SourceConfig):
    type: Literal["file"] = "file"
    config: FileSourceSettings


AnySource = Annotated[KafkaSource | DatagenSource | FileSource, Field(discriminator="type")]

# --------------------------------------------------------------------------------- transformations


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
                window_logic.parse_aggregate(text)
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
            cep_logic.parse_pattern(v)
        except cep_logic.PatternError as e:
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
            variables = set(cep_logic.parse_pattern(self.pattern).variables)
        except cep_logic.PatternError:
            return self
        unknown = sorted(set(self.define) - variables)
        if unknown:
            raise ValueError(f"define names variables not in the pattern: {', '.join(unknown)}")
        return self


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


AnyTransformation = Annotated[
    FilterTransformation | MapTransformation | KeyByTransformation | WindowTransformation | CepTransformation,
    Field(discriminator="type"),
]

# ------------------------------------------------------------------------------------------- sinks


class DatabaseSinkSettings(_Strict):
    connection_string: str = Field(
        min_length=1, description="postgresql://user:pass@host:port/db or sqlite:///path/to.db"
    )
    table: str = Field(description="Table name (optionally schema.table); created if missing")
    key: list[str] | None = Field(default=None, description="Upsert key columns")
    batch_size: StrictInt = Field(default=1000, ge=1, le=100_000)
    delivery: Literal["exactly_once", "at_least_once"] = Field(
        default="exactly_once",
        description="exactly_once: rows are committed with each checkpoint (visible up to one checkpoint "
        "interval later); at_least_once: rows are written as they come, replays may repeat them",
    )

    @field_validator("connection_string")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://", "sqlite://")):
            raise ValueError("must start with postgresql://, postgres:// or sqlite:///")
        problem = connection_string_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError("must be an identifier like 'alerts' or 'public.alerts'")
        reserved = reserved_table_reason(v)
        if reserved:
            raise ValueError(reserved)
        return v

    @field_validator("key", mode="before")
    @classmethod
    def _key_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class KafkaSinkSettings(_Strict):
    bootstrap_servers: Annotated[list[str], WithJsonSchema(BOOTSTRAP_SERVERS_SCHEMA)] = Field(min_length=1)
    topic: str = Field(min_length=1, max_length=249)
    key_field: str | None = None

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return _split_servers(v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        return _check_servers(v)


class FileSinkSettings(_Strict):
    path: str = Field(
        min_length=1,
        description="JSON lines output, one file per task: '{task}' in the path is replaced by the task id, "
        "else the file is <path>-<task>.jsonl",
    )


class PrintSinkSettings(_Strict):
    prefix: str = ""


class DiscardSinkSettings(_Strict):
    pass


class SinkConfig(_Strict):
    """One sink of a job. Build with ``SinkConfig.database(...)``, ``.kafka``, ``.file``, ``.print``."""

    type: str
    config: Any

    @staticmethod
    def database(connection_string: str, table: str, **kw: Any) -> Any:
        return DatabaseSink(
            config=DatabaseSinkSettings.model_validate(
                {"connection_string": connection_string, "table": table, **kw}
            )
        )

    @staticmethod
    def kafka(bootstrap_servers: list[str] | str, topic: str, **kw: Any) -> Any:
        return KafkaSink(
            config=KafkaSinkSettings.model_validate(
                {"bootstrap_servers": bootstrap_servers, "topic": topic, **kw}
            )
        )

    @staticmethod
    def file(path: str) -> Any:
        return FileSink(config=FileSinkSettings(path=path))

    @staticmethod
    def print(prefix: str = "") -> Any:
        return PrintSink(config=PrintSinkSettings(prefix=prefix))

    @staticmethod
    def discard() -> Any:
        return DiscardSink()


class DatabaseSink(SinkConfig):
    type: Literal["database"] = "database"
    config: DatabaseSinkSettings


class KafkaSink(SinkConfig):
    type: Literal["kafka"] = "kafka"
    config: KafkaSinkSettings


class FileSink(SinkConfig):
    type: Literal["file"] = "file"
    config: FileSinkSettings


class PrintSink(SinkConfig):
    type: Literal["print"] = "print"
    config: PrintSinkSettings = Field(default_factory=PrintSinkSettings)


class DiscardSink(SinkConfig):
    type: Literal["discard"] = "discard"
    config: DiscardSinkSettings = Field(default_factory=DiscardSinkSettings)


AnySink = Annotated[
    DatabaseSink | KafkaSink | FileSink | PrintSink | DiscardSink, Field(discriminator="type")
]

DISCRIMINATOR_TAGS = frozenset(
    {"kafka", "datagen", "file", "filter", "map", "key_by", "window", "cep", "database", "print", "discard"}
)


def duration_td(value: str | int) -> timedelta:
    return timedelta(milliseconds=parse_duration_ms(value))
