"""Typed configs of every source and sink type: the contract of a connector's ``config`` keys.

Each item of a job is ``{"type": ..., "config": {...}}``; the ``type`` picks one of the models below
(a pydantic discriminated union), so unknown types and unknown keys are rejected with their path.
Semantic checks (servers, connection strings, reserved table names) run here too, at submit. The
strict base model and the stored-config context shared with
:mod:`heliosdb_streaming.model.transformations` live here as well.
"""

from __future__ import annotations

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

from heliosdb_streaming.model.durations import parse_duration_ms

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

# A number of a job config is a JSON number, never a boolean or a string: strict in every mode.
StrictInt = Annotated[int, Strict()]
# Validation context of a config the store already holds (it passed these checks at submit): the
# expensive and the version-dependent checks (expressions, patterns, bounds) are skipped on reload.
STORED = "stored"


def is_stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(STORED))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def split_servers(v: Any) -> Any:
    """Accepts bootstrap servers as a list or as the comma string Kafka users are used to."""
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def check_servers(v: list[str]) -> list[str]:
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
    partitioned_by: str | None = Field(
        default=None,
        description="(addition) a field whose value is the message key under Kafka's default "
        "partitioner, so every value lives in one partition: a keyed step on it needs no repartition. "
        "A promise of the producer, not checked",
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_servers(v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        return check_servers(v)


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
    partitioned_by: str | None = Field(
        default=None,
        description="(addition) a field every value of which lives in one file: a keyed step on it "
        "needs no repartition. A promise of the writer of the files, not checked",
    )


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

# ------------------------------------------------------------------------------------------- sinks


MARKER_TABLE = "heliosdb_sink_markers"
# The unique indexes the database sink creates on a table end so (``_Backend.ensure_unique`` in
# runtime/connectors/database.py); PostgreSQL keeps indexes and tables in one namespace, so a table
# of that name would stand in for the index.
ENGINE_INDEX_SUFFIX = "_helios_key"


def reserved_table_reason(table: str) -> str | None:
    """Why ``table`` names a relation the engine owns (None when it does not): a sink must never write
    into the marker table, which guards every job's exactly-once writes on that database.

    Compared as the databases may resolve it: any schema, any case (SQLite ignores case even in
    quoted names), with or without double quotes.
    """
    name = _last_part(table).casefold()
    if name == MARKER_TABLE:
        return (
            f"{MARKER_TABLE!r} is reserved: it is the engine's marker table, which records the "
            "checkpoints every exactly-once sink on that database has committed"
        )
    if name.endswith(ENGINE_INDEX_SUFFIX):
        return f"names ending in {ENGINE_INDEX_SUFFIX!r} are reserved for the engine's unique indexes"
    return None


def connection_string_problem(connection_string: str) -> str | None:
    """Why a ``postgresql://`` URL cannot be read as meant (None when it can), never quoting it.

    A ``/``, ``?`` or ``#`` in the user info ends the authority early, and asyncpg ends the user info
    at its first ``@``: the driver then takes part of the password for a host, port or database and
    quotes it in its errors, so such a URL is refused up front (libpq asks for percent-encoding too).
    """
    if not connection_string.startswith(("postgresql://", "postgres://")):
        return None
    rest = connection_string.split("://", 1)[1]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, after = rest[:end], rest[end:]
    path = after.split("?", 1)[0]
    port = netloc.rsplit(":", 1)[1] if ":" in netloc and "@" not in netloc else ""
    hosts_and_ports = all(p.isdigit() for p in re.split(r"[,:\]]", port) if p)  # h1:5432,h2:5433
    _userinfo, at, hostspec = netloc.partition("@")
    early_end = "@" in after and (not hostspec if at else ("@" in path or not hosts_and_ports))
    if early_end or netloc.count("@") > 1:
        return (
            "the user name or password holds '@', '/', '?' or '#': percent-encode them in a URL "
            "('@' -> %40, '/' -> %2F, '?' -> %3F, '#' -> %23)"
        )
    return None


def _last_part(table: str) -> str:
    """The unqualified name of ``name``, ``schema.name``, ``"schema"."name"`` (quotes removed)."""
    parts = re.findall(r'\s*(?:"((?:[^"]|"")*)"|([^."]*))\s*(?:\.|$)', table.strip())
    quoted, bare = parts[-2] if len(parts) > 1 and parts[-1] == ("", "") else parts[-1]
    return str(quoted).replace('""', '"') if quoted else str(bare)


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
        return split_servers(v)

    @field_validator("bootstrap_servers")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        return check_servers(v)


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
    {
        "kafka",
        "datagen",
        "file",
        "filter",
        "map",
        "key_by",
        "window",
        "cep",
        "python",
        "process",
        "database",
        "print",
        "discard",
    }
)


def duration_td(value: str | int) -> timedelta:
    return timedelta(milliseconds=parse_duration_ms(value))
