"""The ``database`` sink: PostgreSQL (asyncpg) or SQLite (stdlib, in a worker thread, WAL mode).

The table is created when missing, with columns inferred from the first batch: int -> BIGINT,
float -> DOUBLE PRECISION, bool -> BOOLEAN, str -> TEXT, dict/list -> JSONB (SQLite: TEXT holding
JSON), None or anything else -> TEXT. Columns that show up later are added (ALTER TABLE ADD COLUMN);
a BIGINT column that receives a fraction is widened to DOUBLE PRECISION (PostgreSQL). With ``key``
the key columns get a primary key (or, on an existing table, a unique index) and writes are upserts
(``ON CONFLICT (key) DO UPDATE``; the last record of a batch wins); without it PostgreSQL writes
use COPY. ``table`` may be ``schema.table`` (PostgreSQL creates the schema when missing; SQLite has
no schemas and ignores the qualifier unless it is ``main`` or ``temp``).

``write`` buffers and writes when ``batch_size`` records are waiting; ``flush`` writes the rest.
Transient failures (connection lost, server restarting, locked database, serialization failure)
are retried with exponential backoff, ``max_attempts`` times, then raised as
:class:`DatabaseSinkError`. A retried plain write may duplicate rows (at-least-once); upserts and
:meth:`DatabaseSinkWriter.write_transaction` are idempotent. Messages never contain the password
of the connection string.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson

from heliosdb_streaming.model.connectors import MARKER_TABLE, reserved_table_reason
from heliosdb_streaming.runtime.connectors.secrets import mask_connection_string, mask_in_text
from heliosdb_streaming.runtime.contracts import Batch, Record

__all__ = ["DatabaseSinkError", "DatabaseSinkWriter", "mask_connection_string", "quote_ident"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MARKER_KEY = ("job_id", "task_id", "checkpoint_id")

BIGINT = "BIGINT"
DOUBLE = "DOUBLE PRECISION"
BOOLEAN = "BOOLEAN"
TEXT = "TEXT"
JSON = "JSONB"
OTHER = "OTHER"  # an existing column of a type we pass values to unchanged

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DatabaseSinkError(RuntimeError):
    """A database write that failed for good (after retries, or not retryable)."""


class _BadValue(Exception):
    pass


class _Widen(Exception):
    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (PostgreSQL and SQLite)."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def split_table(table: str) -> tuple[str | None, str]:
    parts = table.split(".")
    if len(parts) == 1:
        schema, name = None, parts[0]
    elif len(parts) == 2:
        schema, name = parts[0], parts[1]
    else:
        raise ValueError(f"table {table!r} must be 'name' or 'schema.name'")
    for part in (schema, name):
        if part is not None and not _IDENTIFIER.match(part):
            raise ValueError(f"table {table!r}: {part!r} is not an identifier (letters, digits, _)")
    return schema, name


def infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return BIGINT
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, dict | list):
        return JSON
    return TEXT


def _json_text(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _to_int(value: Any, column: str) -> Any:
    if value is None or type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _Widen(column)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _BadValue(f"column {column!r} is BIGINT, got {type(value).__name__} {str(value)[:50]!r}")


def _to_float(value: Any, column: str) -> Any:
    if value is None or type(value) is float:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _BadValue(f"column {column!r} is DOUBLE PRECISION, got {type(value).__name__} {str(value)[:50]!r}")


def _to_bool(value: Any, column: str) -> Any:
    if value is None or type(value) is bool:
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f", "1", "0"):
        return value.lower() in ("true", "t", "1")
    raise _BadValue(f"column {column!r} is BOOLEAN, got {type(value).__name__} {str(value)[:50]!r}")


def _to_text(value: Any, column: str) -> Any:
    if value is None or type(value) is str:
        return value
    if isinstance(value, dict | list):
        return _json_text(value)
    return str(value)


def _to_json_object(value: Any, column: str) -> Any:
    return value  # the asyncpg jsonb codec serializes


def _to_json_text(value: Any, column: str) -> Any:
    return None if value is None else _json_text(value)


def _unchanged(value: Any, column: str) -> Any:
    return value


# ------------------------------------------------------------------------------------- backends


class _Backend:
    """The parts that differ between PostgreSQL and SQLite."""

    json_converter: Callable[[Any, str], Any] = staticmethod(_to_json_object)

    def __init__(self, connection_string: str, schema: str | None, table: str) -> None:
        self.connection_string = connection_string
        self.schema = schema
        self.table = table
        self.marker_key_checked = False  # the marker table's key is checked once per writer

    @property
    def qualified(self) -> str:
        return (
            f"{quote_ident(self.schema)}.{quote_ident(self.table)}"
            if self.schema
            else quote_ident(self.table)
        )

    @property
    def marker_table(self) -> str:
        return (
            f"{quote_ident(self.schema)}.{quote_ident(MARKER_TABLE)}"
            if self.schema
            else quote_ident(MARKER_TABLE)
        )

    def check_marker_key(self, unique_keys: list[tuple[list[str], bool]]) -> None:
        """Raises unless the marker table has its primary key and no unique key that could refuse a new
        marker: ``unique_keys`` lists each unique index's columns and whether it is partial.

        Without the key a replayed checkpoint is written twice; with a narrower one (say on
        ``job_id`` alone) a later checkpoint's marker conflicts and its rows are silently dropped.
        A table like that was not made by the engine, so the run fails rather than guess.
        """
        wanted = set(MARKER_KEY)
        has_key = any(set(cols) == wanted and not partial for cols, partial in unique_keys)
        narrower = [cols for cols, partial in unique_keys if partial or not wanted <= set(cols)]
        if has_key and not narrower:
            return
        found = ", ".join("(" + ", ".join(cols) + ")" for cols, _ in unique_keys) or "none"
        raise DatabaseSinkError(
            f"marker table {self.marker_table} was not created by HeliosDB Streaming: it needs exactly "
            f"the primary key ({', '.join(MARKER_KEY)}) (unique keys found: {found}); exactly-once "
            "writes would repeat or drop rows. Drop it and the engine recreates it with its key"
        )

    async def prepare_markers(self) -> None:
        """Creates the marker table when missing, with its key, and checks the key of one that exists."""
        raise NotImplementedError

    def placeholder(self, i: int) -> str:
        raise NotImplementedError

    def is_transient(self, error: BaseException) -> bool:
        raise NotImplementedError

    async def connect(self) -> None:
        raise NotImplementedError

    async def reset(self) -> None:
        """Called after a transient error, before the retry."""

    async def close(self) -> None:
        raise NotImplementedError

    async def existing_columns(self) -> dict[str, str] | None:
        """The table's columns and their kinds, or None when the table does not exist."""
        raise NotImplementedError

    async def create_table(self, columns: dict[str, str], key: list[str] | None) -> None:
        raise NotImplementedError

    async def add_columns(self, columns: dict[str, str]) -> None:
        raise NotImplementedError

    async def widen(self, column: str) -> None:
        raise NotImplementedError

    async def ensure_unique(self, key: list[str]) -> None:
        raise NotImplementedError

    async def write(self, columns: list[str], rows: list[tuple[Any, ...]], key: list[str] | None) -> None:
        raise NotImplementedError

    async def write_transaction(
        self,
        columns: list[str],
        rows: list[tuple[Any, ...]],
        key: list[str] | None,
        marker: tuple[str, str, int],
    ) -> bool:
        raise NotImplementedError

    def upsert_sql(self, columns: list[str], key: list[str] | None) -> str:
        cols = ", ".join(quote_ident(c) for c in columns)
        values = ", ".join(self.placeholder(i) for i in range(1, len(columns) + 1))
        sql = f"INSERT INTO {self.qualified} ({cols}) VALUES ({values})"
        if key:
            updates = [c for c in columns if c not in key]
            target = ", ".join(quote_ident(c) for c in key)
            if updates:
                sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates)
                sql += f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
            else:
                sql += f" ON CONFLICT ({target}) DO NOTHING"
        return sql

    def create_sql(self, table: str, columns: dict[str, str], key: list[str] | None) -> str:
        parts = [f"{quote_ident(name)} {self.sql_type(kind)}" for name, kind in columns.items()]
        if key:
            parts.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in key)})")
        return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)})"

    def sql_type(self, kind: str) -> str:
        return TEXT if kind == OTHER else kind


def _pg_kind(data_type: str) -> str:
    data_type = data_type.lower()
    if data_type in ("bigint", "integer", "smallint"):
        return BIGINT
    if data_type in ("double precision", "real"):
        return DOUBLE
    if data_type == "boolean":
        return BOOLEAN
    if data_type in ("jsonb", "json"):
        return JSON
    if data_type in ("text", "character varying", "character"):
        return TEXT
    return OTHER


async def _init_pg_connection(connection: Any) -> None:
    for name in ("jsonb", "json"):
        binary = name == "jsonb"
        await connection.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=(lambda v: b"\x01" + orjson.dumps(v, default=str)) if binary else _json_text,
            decoder=(lambda b: orjson.loads(b[1:])) if binary else orjson.loads,
            format="binary" if binary else "text",
        )


class _Postgres(_Backend):
    def __init__(self, connection_string: str, schema: str | None, table: str) -> None:
        super().__init__(connection_string, schema, table)
        self.pool: Any = None

    def placeholder(self, i: int) -> str:
        return f"${i}"

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, asyncpg.UniqueViolationError) and str(error.constraint_name or "").startswith(
            "pg_"
        ):
            return True  # two workers ran CREATE TABLE IF NOT EXISTS at once: PostgreSQL's catalog race
        if isinstance(error, asyncpg.DuplicateObjectError | asyncpg.DuplicateTableError):
            return True  # the same race, caught a step later (the row type already exists)
        return isinstance(
            error,
            asyncpg.exceptions.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.TransactionRollbackError
            | asyncpg.exceptions.TooManyConnectionsError
            | asyncpg.InterfaceError
            | asyncpg.exceptions.InternalClientError  # seen when the server kills the connection mid-call
            | ConnectionError
            | OSError
            | asyncio.TimeoutError,
        )

    async def connect(self) -> None:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                self.connection_string, min_size=1, max_size=2, init=_init_pg_connection, timeout=10
            )

    async def reset(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await asyncio.wait_for(pool.close(), 10)

    async def existing_columns(self) -> dict[str, str] | None:
        rows = await self.pool.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2 "
            "ORDER BY ordinal_position",
            self.schema,
            self.table,
        )
        if not rows:
            return None
        return {r["column_name"]: _pg_kind(r["data_type"]) for r in rows}

    async def create_table(self, columns: dict[str, str], key: list[str] | None) -> None:
        async with self.pool.acquire() as connection:
            if self.schema is not None:
                exists = await connection.fetchval(
                    "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
                )
                if not exists:
                    await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
            await connection.execute(self.create_sql(self.qualified, columns, key))

    async def add_columns(self, columns: dict[str, str]) -> None:
        adds = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {quote_ident(c)} {self.sql_type(k)}" for c, k in columns.items()
        )
        await self.pool.execute(f"ALTER TABLE {self.qualified} {adds}")

    async def widen(self, column: str) -> None:
        await self.pool.execute(
            f"ALTER TABLE {self.qualified} ALTER COLUMN {quote_ident(column)} TYPE {DOUBLE}"
        )

    async def ensure_unique(self, key: list[str]) -> None:
        name = quote_ident(f"{self.table}_{'_'.join(key)}_helios_key"[:63])
        cols = ", ".join(quote_ident(k) for k in key)
        await self.pool.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {self.qualified} ({cols})")

    async def _write_on(
        self, connection: Any, columns: list[str], rows: list[tuple[Any, ...]], key: list[str] | None
    ) -> None:
        if key:
            await connection.executemany(self.upsert_sql(columns, key), rows)
        else:
            await connection.copy_records_to_table(
                self.table, records=rows, columns=columns, schema_name=self.schema
            )

    async def write(self, columns: list[str], rows: list[tuple[Any, ...]], key: list[str] | None) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await self._write_on(connection, columns, rows, key)

    async def _ensure_marker_table(self, connection: Any) -> None:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {self.marker_table} (job_id TEXT NOT NULL, task_id TEXT NOT NULL, "
            "checkpoint_id BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (job_id, task_id, checkpoint_id))"
        )

    async def prepare_markers(self) -> None:
        if self.marker_key_checked:
            return
        async with self.pool.acquire() as connection:
            await self._ensure_marker_table(connection)
            rows = await connection.fetch(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) AS cols, "
                "i.indpred IS NOT NULL OR 0 = ANY(i.indkey) AS partial "
                "FROM pg_index i LEFT JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attnum > 0 "
                "WHERE i.indrelid = to_regclass($1) AND i.indisunique GROUP BY i.indexrelid, partial",
                self.marker_table,
            )
            self.check_marker_key([([c for c in r["cols"] if c], bool(r["partial"])) for r in rows])
            self.marker_key_checked = True

    async def write_transaction(
        self,
        columns: list[str],
        rows: list[tuple[Any, ...]],
        key: list[str] | None,
        marker: tuple[str, str, int],
    ) -> bool:
        async with self.pool.acquire() as connection:
            await self._ensure_marker_table(connection)
            async with connection.transaction():
                inserted = await connection.fetchval(
                    f"INSERT INTO {self.marker_table} (job_id, task_id, checkpoint_id) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING RETURNING 1",
                    *marker,
                )
                if not inserted:
                    return False
                if rows:
                    await self._write_on(connection, columns, rows, key)
                return True


def sqlite_path(connection_string: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``; ``sqlite://`` -> memory."""
    rest = connection_string.split("://", 1)[1]
    if rest in ("", "/", "/:memory:", ":memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(
            "SQLite connection strings look like sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return rest[1:]


class _Sqlite(_Backend):
    json_converter = staticmethod(_to_json_text)

    def __init__(self, connection_string: str, schema: str | None, table: str) -> None:
        if schema is not None and schema not in ("main", "temp"):
            schema = None
        super().__init__(connection_string, schema, table)
        self.path = sqlite_path(connection_string)
        self.connection: sqlite3.Connection | None = None
        self.lock = asyncio.Lock()

    def placeholder(self, i: int) -> str:
        return "?"

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, sqlite3.OperationalError):
            text = str(error).lower()
            return "locked" in text or "busy" in text or "disk i/o" in text or "unable to open" in text
        return False

    def sql_type(self, kind: str) -> str:
        return TEXT if kind in (OTHER, JSON) else kind

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self.lock:
            connection = self.connection
            if connection is None:
                raise DatabaseSinkError("the SQLite sink is not open")
            return await asyncio.to_thread(fn, connection)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    async def connect(self) -> None:
        if self.connection is None:
            self.connection = await asyncio.to_thread(self._open)

    async def reset(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await asyncio.to_thread(connection.close)

    async def close(self) -> None:
        await self.reset()

    async def existing_columns(self) -> dict[str, str] | None:
        prefix = f"{quote_ident(self.schema)}." if self.schema else ""

        def query(c: sqlite3.Connection) -> list[Any]:
            return c.execute(f"PRAGMA {prefix}table_info({quote_ident(self.table)})").fetchall()

        rows = await self._run(query)
        if not rows:
            return None
        kinds = {"BIGINT": BIGINT, "INTEGER": BIGINT, "DOUBLE PRECISION": DOUBLE, "REAL": DOUBLE}
        kinds |= {"BOOLEAN": BOOLEAN, "TEXT": TEXT}
        return {r[1]: kinds.get(str(r[2]).upper(), OTHER) for r in rows}

    async def create_table(self, columns: dict[str, str], key: list[str] | None) -> None:
        sql = self.create_sql(self.qualified, columns, key)
        await self._run(lambda c: c.execute(sql))

    async def add_columns(self, columns: dict[str, str]) -> None:
        def add(c: sqlite3.Connection) -> None:
            for name, kind in columns.items():
                c.execute(
                    f"ALTER TABLE {self.qualified} ADD COLUMN {quote_ident(name)} {self.sql_type(kind)}"
                )

        await self._run(add)

    async def widen(self, column: str) -> None:
        return None  # SQLite stores a REAL in an INTEGER column as it is

    async def ensure_unique(self, key: list[str]) -> None:
        name = quote_ident(f"{self.table}_{'_'.join(key)}_helios_key")
        prefix = f"{quote_ident(self.schema)}." if self.schema else ""
        cols = ", ".join(quote_ident(k) for k in key)
        sql = f"CREATE UNIQUE INDEX IF NOT EXISTS {prefix}{name} ON {quote_ident(self.table)} ({cols})"
        await self._run(lambda c: c.execute(sql))

    def _create_markers(self, c: sqlite3.Connection) -> None:
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {self.marker_table} (job_id TEXT NOT NULL, task_id TEXT NOT NULL, "
            "checkpoint_id BIGINT NOT NULL, "
            "committed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), "
            "PRIMARY KEY (job_id, task_id, checkpoint_id))"
        )

    async def prepare_markers(self) -> None:
        def run(c: sqlite3.Connection) -> None:
            self._create_markers(c)
            self.check_marker_key(self._unique_keys(c, MARKER_TABLE))
            self.marker_key_checked = True

        if not self.marker_key_checked:
            await self._run(run)

    def _unique_keys(self, c: sqlite3.Connection, table: str) -> list[tuple[list[str], bool]]:
        """Each unique index of ``table`` (its primary key included): columns, and whether partial."""
        prefix = f"{quote_ident(self.schema)}." if self.schema else ""
        keys = []
        for _seq, index, unique, _origin, partial in c.execute(
            f"PRAGMA {prefix}index_list({quote_ident(table)})"
        ).fetchall():
            if unique:
                info = c.execute(f"PRAGMA {prefix}index_info({quote_ident(index)})").fetchall()
                expression = any(row[1] < 0 for row in info)  # cid -2: an expression, -1: the rowid
                columns = [str(row[2]) for row in info if row[2] is not None]
                keys.append((columns, bool(partial) or expression))
        return keys

    def _insert(
        self, c: sqlite3.Connection, columns: list[str], rows: list[tuple[Any, ...]], key: list[str] | None
    ) -> None:
        c.executemany(self.upsert_sql(columns, key), rows)

    async def write(self, columns: list[str], rows: list[tuple[Any, ...]], key: list[str] | None) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                self._insert(c, columns, rows, key)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(run)

    async def write_transaction(
        self,
        columns: list[str],
        rows: list[tuple[Any, ...]],
        key: list[str] | None,
        marker: tuple[str, str, int],
    ) -> bool:
        markers = self.marker_table

        def run(c: sqlite3.Connection) -> bool:
            self._create_markers(c)
            c.execute("BEGIN IMMEDIATE")
            try:
                cursor = c.execute(
                    f"INSERT INTO {markers} (job_id, task_id, checkpoint_id) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    marker,
                )
                if cursor.rowcount != 1:
                    c.execute("ROLLBACK")
                    return False
                if rows:
                    self._insert(c, columns, rows, key)
                c.execute("COMMIT")
                return True
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(run)


# ----------------------------------------------------------------------------------------- sink


class DatabaseSinkWriter:
    """Writes records into a PostgreSQL or SQLite table; see the module docstring."""

    def __init__(
        self,
        *,
        connection_string: str,
        table: str,
        key: list[str] | str | None = None,
        batch_size: int = 1000,
        max_attempts: int = 5,
        retry_delay_s: float = 0.2,
        exactly_once: bool = True,
    ) -> None:
        self.connection_string = connection_string
        # read by the worker: stage output until its checkpoint completes, then write_transaction
        self.exactly_once = exactly_once
        self.masked = mask_connection_string(connection_string)
        self.table = table
        self.key = [key] if isinstance(key, str) else (list(key) if key else None)
        if self.key:
            for k in self.key:
                if not k:
                    raise ValueError("key columns must not be empty")
        self.batch_size = max(1, batch_size)
        self.max_attempts = max(1, max_attempts)
        self.retry_delay_s = retry_delay_s
        reserved = reserved_table_reason(table)
        if reserved:
            raise ValueError(f"table {table!r}: {reserved}")
        schema, name = split_table(table)
        backend: _Backend
        if connection_string.startswith(("postgresql://", "postgres://")):
            backend = _Postgres(connection_string, schema, name)
        elif connection_string.startswith("sqlite:"):
            backend = _Sqlite(connection_string, schema, name)
        else:
            raise ValueError(
                f"unsupported connection string {self.masked!r} (postgresql://, postgres://, sqlite:///)"
            )
        self._backend = backend
        self._buffer: Batch = []
        self._columns: dict[str, str] | None = None  # column -> kind, once the table is known
        self.rows_written = 0

    # ------------------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        await self._retrying("connecting", self._backend.connect)

    async def write(self, task_id: str, records: Batch) -> None:
        self._buffer.extend(records)
        if len(self._buffer) >= self.batch_size:
            await self._write_buffer()

    async def flush(self) -> None:
        await self._write_buffer()

    async def close(self) -> None:
        try:
            if self._buffer:
                await self._write_buffer()
        finally:
            try:
                await self._backend.close()
            except Exception as e:
                log.warning("closing %s failed: %s", self.masked, self._masked_error(e))

    async def write_transaction(self, rows: list[Record], marker: tuple[str, str, int]) -> bool:
        """Writes ``rows`` and a marker ``(job_id, task_id, checkpoint_id)`` in one transaction.

        Returns False (and writes nothing) when the marker is already there, so replaying a
        checkpoint's output after a failure writes it exactly once. The marker table
        ``heliosdb_sink_markers`` lives next to the target table and is created when missing.
        """
        job_id, task_id, checkpoint_id = marker
        marker = (str(job_id), str(task_id), int(checkpoint_id))
        rows = self._dedupe(rows)

        async def attempt() -> bool:
            await self._backend.connect()
            await self._backend.prepare_markers()  # before any DDL on the table: a bad one stops here
            columns, tuples = await self._prepare(rows)
            return await self._backend.write_transaction(columns, tuples, self.key, marker)

        return await self._retrying(f"writing checkpoint {marker[2]} of task {marker[1]}", attempt)

    # ---------------------------------------------------------------------------------- writes

    async def _write_buffer(self) -> None:
        while self._buffer:
            batch = self._buffer[: self.batch_size]
            rows = self._dedupe(batch)
            await self._retrying(f"writing {len(rows)} row(s)", functools.partial(self._write_rows, rows))
            del self._buffer[: len(batch)]
            self.rows_written += len(rows)

    async def _write_rows(self, rows: list[Record]) -> None:
        await self._backend.connect()
        columns, tuples = await self._prepare(rows)
        if tuples:
            await self._backend.write(columns, tuples, self.key)

    def _dedupe(self, rows: list[Record]) -> list[Record]:
        """With a key, keeps the last record per key (one statement cannot upsert a key twice)."""
        key = self.key
        if not key:
            return rows
        for record in rows:
            missing = [k for k in key if record.get(k) is None]
            if missing:
                raise DatabaseSinkError(
                    f"record without key column(s) {missing} for table {self.table!r}: "
                    f"{_json_text(record)[:200]}"
                )
        if len(key) == 1:
            k0 = key[0]
            last = {_hashable(r[k0]): r for r in rows}
        else:
            last = {tuple(_hashable(r[k]) for k in key): r for r in rows}
        return list(last.values()) if len(last) != len(rows) else rows

    async def _prepare(self, rows: list[Record]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Makes sure the table has the batch's columns; returns them and the converted rows."""
        if not rows:
            return [], []
        columns = list(dict.fromkeys(itertools.chain.from_iterable(rows)))  # first-appearance order
        if "" in columns:
            raise DatabaseSinkError(f"a record has an empty field name (table {self.table!r})")
        known = self._columns or {}
        unknown = {c for c in columns if c not in known}
        if unknown:
            await self._ensure_columns(self._infer(rows, columns, unknown))
        assert self._columns is not None
        while True:
            try:
                return columns, self._convert(columns, rows)
            except _Widen as w:
                await self._backend.widen(w.column)
                self._columns[w.column] = DOUBLE

    @staticmethod
    def _infer(rows: list[Record], columns: list[str], names: set[str]) -> dict[str, str]:
        """Column kinds from the first non-null value; ints and floats mixed make DOUBLE PRECISION."""
        kinds: dict[str, str | None] = dict.fromkeys(c for c in columns if c in names)
        for record in rows:
            for name, value in record.items():
                if value is None or name not in kinds:
                    continue
                current = kinds[name]
                if current is None:
                    kinds[name] = infer_type(value)
                elif current == BIGINT and type(value) is float:
                    kinds[name] = DOUBLE
        return {name: kind or TEXT for name, kind in kinds.items()}

    async def _ensure_columns(self, wanted: dict[str, str]) -> None:
        if self._columns is None:
            existing = await self._backend.existing_columns()
            if existing is None:
                if self.key:
                    for k in self.key:
                        wanted.setdefault(k, TEXT)
                await self._backend.create_table(wanted, self.key)
                existing = await self._backend.existing_columns() or dict(wanted)
            elif self.key:
                missing_key = [k for k in self.key if k not in existing]
                if missing_key:
                    raise DatabaseSinkError(f"table {self.table!r} has no key column(s) {missing_key}")
                await self._backend.ensure_unique(self.key)
            self._columns = existing
        new = {name: kind for name, kind in wanted.items() if name not in self._columns}
        if new:
            await self._backend.add_columns(new)
            self._columns.update(new)

    def _convert(self, columns: list[str], rows: list[Record]) -> list[tuple[Any, ...]]:
        assert self._columns is not None
        json_converter = self._backend.json_converter
        converters = {
            BIGINT: _to_int,
            DOUBLE: _to_float,
            BOOLEAN: _to_bool,
            TEXT: _to_text,
            JSON: json_converter,
        }
        plan = [(name, converters.get(self._columns.get(name, TEXT), _unchanged)) for name in columns]
        out: list[tuple[Any, ...]] = []
        try:
            for record in rows:
                get = record.get
                out.append(tuple([convert(get(name), name) for name, convert in plan]))
        except _BadValue as e:
            raise DatabaseSinkError(f"table {self.table!r}: {e}") from None
        return out

    # ----------------------------------------------------------------------------------- retries

    def _masked_error(self, error: BaseException) -> str:
        return mask_in_text(f"{type(error).__name__}: {error}", self.connection_string)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_delay_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await op()
            except DatabaseSinkError:
                raise
            except Exception as e:
                transient = self._backend.is_transient(e)
                if not transient or attempt == self.max_attempts:
                    tried = f" after {attempt} attempts" if transient else ""
                    raise DatabaseSinkError(
                        f"{what} to table {self.table!r} at {self.masked} failed{tried}: "
                        f"{self._masked_error(e)}"
                    ) from None
                log.warning(
                    "%s to table %r at %s failed (attempt %d of %d, retrying in %.1fs): %s",
                    what,
                    self.table,
                    self.masked,
                    attempt,
                    self.max_attempts,
                    delay,
                    self._masked_error(e),
                )
                await asyncio.sleep(delay)
                delay *= 2
                try:
                    await self._backend.reset()
                except Exception as reset_error:
                    log.debug("reset after failure: %s", self._masked_error(reset_error))
                self._columns = None  # re-read the table: the failure may have been mid-DDL
        raise AssertionError("unreachable")


def _hashable(value: Any) -> Any:
    return _json_text(value) if isinstance(value, dict | list) else value
