"""The database sink against the local PostgreSQL server and SQLite files (no mocks)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from heliosdb_streaming.runtime.connectors.database import DatabaseSinkError, DatabaseSinkWriter, sqlite_path
from heliosdb_streaming.runtime.connectors.secrets import mask_connection_string, mask_in_text

pytestmark = pytest.mark.timeout(120)


async def pg_fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def pg_types(dsn: str, schema: str, table: str) -> dict[str, str]:
    rows = await pg_fetch(
        dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


ROW = {
    "id": 1,
    "amount": 12.5,
    "flag": True,
    "name": "alice",
    "meta": {"tags": ["a", "b"], "n": 1},
    "empty": None,
}

# ------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_pg_creates_the_table_with_inferred_types_and_jsonb(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.events", key=None, batch_size=100)
    await sink.open()
    await sink.write(
        "t0", [ROW, {"id": 2, "amount": 3, "flag": False, "name": "bob", "meta": [1, 2], "empty": None}]
    )
    await sink.flush()
    await sink.close()
    assert await pg_types(pg_dsn, pg_schema, "events") == {
        "id": "bigint",
        "amount": "double precision",
        "flag": "boolean",
        "name": "text",
        "meta": "jsonb",
        "empty": "text",
    }
    rows = await pg_fetch(
        pg_dsn,
        f"SELECT id, amount, flag, name, meta::text AS meta, meta->>'n' AS n "
        f'FROM "{pg_schema}".events ORDER BY id',
    )
    assert [(r["id"], r["amount"], r["flag"], r["name"], json.loads(r["meta"]), r["n"]) for r in rows] == [
        (1, 12.5, True, "alice", {"tags": ["a", "b"], "n": 1}, "1"),
        (2, 3.0, False, "bob", [1, 2], None),
    ]


@pytest.mark.postgres
async def test_pg_buffers_until_batch_size_and_copies_many_rows(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.bulk", key=None, batch_size=1000)
    await sink.open()
    await sink.write("t0", [{"i": i, "s": f"v{i}"} for i in range(999)])
    assert sink.rows_written == 0  # buffered
    await sink.write("t0", [{"i": i, "s": f"v{i}"} for i in range(999, 5000)])
    assert sink.rows_written == 5000
    await sink.write("t0", [{"i": 5000, "s": "last"}])
    await sink.flush()
    await sink.close()
    rows = await pg_fetch(
        pg_dsn, f'SELECT count(*) AS n, count(DISTINCT i) AS d, max(i) AS m FROM "{pg_schema}".bulk'
    )
    assert (rows[0]["n"], rows[0]["d"], rows[0]["m"]) == (5001, 5001, 5000)


@pytest.mark.postgres
async def test_pg_adds_new_columns_and_widens_bigint(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.evolve", key=None, batch_size=10)
    await sink.open()
    await sink.write("t0", [{"a": 1}])
    await sink.flush()
    await sink.write("t0", [{"a": 2.5, "b": "new", "c": {"x": 1}}])
    await sink.flush()
    await sink.close()
    assert await pg_types(pg_dsn, pg_schema, "evolve") == {"a": "double precision", "b": "text", "c": "jsonb"}
    rows = await pg_fetch(pg_dsn, f'SELECT a, b, c::text AS c FROM "{pg_schema}".evolve ORDER BY a')
    assert [(r["a"], r["b"], r["c"]) for r in rows] == [(1.0, None, None), (2.5, "new", '{"x": 1}')]


@pytest.mark.postgres
async def test_pg_upserts_on_key_last_record_wins(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(
        connection_string=pg_dsn, table=f"{pg_schema}.cards", key=["card_id"], batch_size=50
    )
    await sink.open()
    await sink.write("t0", [{"card_id": f"c{i % 10}", "total": i, "seen": {"i": i}} for i in range(100)])
    await sink.flush()
    await sink.write("t1", [{"card_id": "c3", "total": -1, "seen": None}])
    await sink.flush()
    await sink.close()
    rows = await pg_fetch(
        pg_dsn, f'SELECT card_id, total, seen::text AS seen FROM "{pg_schema}".cards ORDER BY card_id'
    )
    expected = {f"c{k}": 90 + k for k in range(10)} | {"c3": -1}
    assert {r["card_id"]: r["total"] for r in rows} == expected
    assert next(r["seen"] for r in rows if r["card_id"] == "c5") == '{"i": 95}'
    constraints = await pg_fetch(
        pg_dsn,
        "SELECT constraint_type FROM information_schema.table_constraints "
        "WHERE table_schema = $1 AND table_name = 'cards'",
        pg_schema,
    )
    assert "PRIMARY KEY" in [c["constraint_type"] for c in constraints]


@pytest.mark.postgres
async def test_pg_composite_key_and_existing_table_without_constraint(pg_dsn: str, pg_schema: str) -> None:
    connection = await asyncpg.connect(pg_dsn)
    await connection.execute(f'CREATE TABLE "{pg_schema}".agg (k1 TEXT, k2 BIGINT, v DOUBLE PRECISION)')
    await connection.close()
    sink = DatabaseSinkWriter(
        connection_string=pg_dsn, table=f"{pg_schema}.agg", key=["k1", "k2"], batch_size=10
    )
    await sink.open()
    await sink.write("t0", [{"k1": "a", "k2": 1, "v": 1.0}, {"k1": "a", "k2": 2, "v": 2.0}])
    await sink.flush()
    await sink.write("t0", [{"k1": "a", "k2": 1, "v": 10.0}, {"k1": "b", "k2": 1, "v": 3.0, "extra": True}])
    await sink.flush()
    await sink.close()
    rows = await pg_fetch(pg_dsn, f'SELECT k1, k2, v, extra FROM "{pg_schema}".agg ORDER BY k1, k2')
    assert [tuple(r) for r in rows] == [("a", 1, 10.0, None), ("a", 2, 2.0, None), ("b", 1, 3.0, True)]


@pytest.mark.postgres
async def test_pg_quotes_identifiers(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(
        connection_string=pg_dsn, table=f"{pg_schema}.select", key=["from"], batch_size=10
    )
    await sink.open()
    weird = {"from": "k", 'we"ird col': 1, "drop table x; --": "safe", "Upper": 2}
    await sink.write("t0", [weird])
    await sink.flush()
    await sink.close()
    rows = await pg_fetch(pg_dsn, f'SELECT * FROM "{pg_schema}"."select"')
    assert dict(rows[0]) == weird


@pytest.mark.postgres
async def test_pg_bad_value_and_missing_key_are_clear_errors(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(
        connection_string=pg_dsn, table=f"{pg_schema}.strict", key=["id"], batch_size=10
    )
    await sink.open()
    await sink.write("t0", [{"id": 1, "n": 5}])
    await sink.flush()
    await sink.write("t0", [{"id": 2, "n": "five"}])
    with pytest.raises(DatabaseSinkError, match="column 'n' is BIGINT, got str 'five'"):
        await sink.flush()
    sink._buffer.clear()
    await sink.write("t0", [{"n": 1}])
    with pytest.raises(DatabaseSinkError, match=r"without key column\(s\) \['id'\]"):
        await sink.flush()
    sink._buffer.clear()
    await sink.close()


@pytest.mark.postgres
async def test_pg_write_transaction_writes_a_checkpoint_once(pg_dsn: str, pg_schema: str) -> None:
    table = f"{pg_schema}.alerts"
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=table, key=None, batch_size=10)
    await sink.open()
    rows = [{"alert": i} for i in range(5)]
    assert await sink.write_transaction(rows, ("job-1", "s0-p0", 7)) is True
    assert await sink.write_transaction(rows, ("job-1", "s0-p0", 7)) is False  # replay: nothing written
    assert await sink.write_transaction(rows[:2], ("job-1", "s0-p0", 8)) is True
    assert await sink.write_transaction(rows[:1], ("job-1", "s0-p1", 7)) is True
    assert await sink.write_transaction([], ("job-2", "s0-p0", 7)) is True
    # Two writers racing for the same marker: exactly one wins.
    other = DatabaseSinkWriter(connection_string=pg_dsn, table=table, key=None, batch_size=10)
    await other.open()
    results = await asyncio.gather(
        sink.write_transaction(rows, ("job-3", "t", 1)), other.write_transaction(rows, ("job-3", "t", 1))
    )
    assert sorted(results) == [False, True]
    await other.close()
    await sink.close()
    count = await pg_fetch(pg_dsn, f'SELECT count(*) AS n FROM "{pg_schema}".alerts')
    assert count[0]["n"] == 5 + 2 + 1 + 5
    markers = await pg_fetch(
        pg_dsn,
        f'SELECT job_id, task_id, checkpoint_id, committed_at FROM "{pg_schema}".heliosdb_sink_markers',
    )
    assert sorted((m["job_id"], m["task_id"], m["checkpoint_id"]) for m in markers) == [
        ("job-1", "s0-p0", 7),
        ("job-1", "s0-p0", 8),
        ("job-1", "s0-p1", 7),
        ("job-2", "s0-p0", 7),
        ("job-3", "t", 1),
    ]
    assert all(m["committed_at"] is not None for m in markers)


@pytest.mark.postgres
async def test_pg_write_transaction_with_upsert_key(pg_dsn: str, pg_schema: str) -> None:
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.latest", key="k", batch_size=10)
    await sink.open()
    assert await sink.write_transaction([{"k": "a", "v": 1}, {"k": "a", "v": 2}], ("j", "t", 1))
    assert await sink.write_transaction([{"k": "a", "v": 3}], ("j", "t", 2))
    assert not await sink.write_transaction([{"k": "a", "v": 99}], ("j", "t", 2))
    await sink.close()
    rows = await pg_fetch(pg_dsn, f'SELECT k, v FROM "{pg_schema}".latest')
    assert [tuple(r) for r in rows] == [("a", 3)]


@pytest.mark.postgres
async def test_pg_retries_when_the_connection_is_killed(pg_dsn: str, pg_schema: str) -> None:
    app = f"helios-retry-{pg_schema}"  # only this sink's connections carry this name
    separator = "&" if "?" in pg_dsn else "?"
    sink = DatabaseSinkWriter(
        connection_string=f"{pg_dsn}{separator}application_name={app}",
        table=f"{pg_schema}.retry",
        key=None,
        batch_size=10,
        retry_delay_s=0.05,
    )
    await sink.open()
    await sink.write("t0", [{"i": 0}])
    await sink.flush()
    # A server-side disconnect of the sink's connections.
    connection = await asyncpg.connect(pg_dsn)
    killed = await connection.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app
    )
    await connection.close()
    assert killed >= 1
    await sink.write("t0", [{"i": 1}])
    await sink.flush()
    await sink.close()
    rows = await pg_fetch(pg_dsn, f'SELECT i FROM "{pg_schema}".retry ORDER BY i')
    assert [r["i"] for r in rows] == [0, 1]


async def test_unreachable_database_error_masks_the_password() -> None:
    dsn = "postgresql://helios:s3cret-Passw0rd@127.0.0.1:1/nope"
    sink = DatabaseSinkWriter(
        connection_string=dsn, table="t", key=None, batch_size=1, max_attempts=2, retry_delay_s=0.01
    )
    with pytest.raises(DatabaseSinkError) as info:
        await sink.open()
    message = str(info.value)
    assert "s3cret-Passw0rd" not in message
    assert "postgresql://helios:***@127.0.0.1:1/nope" in message
    assert "after 2 attempts" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_mask_connection_string() -> None:
    assert mask_connection_string("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert (
        mask_connection_string("postgres://u:p@ss@h/db?sslmode=require")
        == "postgres://u:***@h/db?sslmode=require"
    )
    assert mask_connection_string("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        mask_connection_string("postgresql://h/db?user=u&password=topsecret")
        == "postgresql://h/db?user=u&password=***"
    )
    assert mask_connection_string("host=h password='a b' user=u") == "host=h password=*** user=u"
    assert mask_connection_string("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"
    assert mask_in_text("failed: bad password hunter22 for u", "postgresql://u:hunter22@h/db") == (
        "failed: bad password *** for u"
    )


# ----------------------------------------------------------------------------------------- SQLite


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite://") == ":memory:"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"


async def test_sqlite_creates_table_types_json_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = DatabaseSinkWriter(connection_string=f"sqlite:///{db}", table="events", key=None, batch_size=2)
    await sink.open()
    await sink.write("t0", [ROW])
    await sink.write("t0", [{"id": 2, "amount": 1, "later": "x"}])  # reaches batch_size: written
    assert sink.rows_written == 2
    await sink.write("t1", [{"id": 3, "brand_new": 7.25}])
    await sink.flush()
    await sink.close()
    columns = {r[1]: r[2] for r in sqlite_rows(db, "PRAGMA table_info(events)")}
    assert columns == {
        "id": "BIGINT",
        "amount": "DOUBLE PRECISION",
        "flag": "BOOLEAN",
        "name": "TEXT",
        "meta": "TEXT",
        "empty": "TEXT",
        "later": "TEXT",
        "brand_new": "DOUBLE PRECISION",
    }
    rows = sqlite_rows(
        db, "SELECT id, amount, flag, name, meta, json_extract(meta, '$.n'), later FROM events ORDER BY id"
    )
    assert rows == [
        (1, 12.5, 1, "alice", '{"tags":["a","b"],"n":1}', 1, None),
        (2, 1.0, None, None, None, None, "x"),
        (3, None, None, None, None, None, None),
    ]
    assert sqlite_rows(db, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_upsert_schema_qualifier_and_markers(tmp_path: Path) -> None:
    db = tmp_path / "up.db"
    sink = DatabaseSinkWriter(
        connection_string=f"sqlite:///{db}", table="public.totals", key=["card"], batch_size=100
    )
    await sink.open()
    await sink.write("t0", [{"card": f"c{i % 3}", "n": i} for i in range(9)])
    await sink.flush()
    await sink.write("t0", [{"card": "c1", "n": 100, "note": "updated"}])
    await sink.flush()
    assert await sink.write_transaction([{"card": "c9", "n": 9}], ("job", "task", 1)) is True
    assert await sink.write_transaction([{"card": "c9", "n": 10}], ("job", "task", 1)) is False
    await sink.close()
    # SQLite has no schemas: 'public.' is ignored.
    assert sorted(sqlite_rows(db, "SELECT card, n, note FROM totals")) == [
        ("c0", 6, None),
        ("c1", 100, "updated"),
        ("c2", 8, None),
        ("c9", 9, None),
    ]
    assert sqlite_rows(db, "SELECT job_id, task_id, checkpoint_id FROM heliosdb_sink_markers") == [
        ("job", "task", 1)
    ]


async def test_sqlite_relative_path_and_reopen_existing_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for run in range(2):
        sink = DatabaseSinkWriter(connection_string="sqlite:///rel.db", table="t", key=None, batch_size=10)
        await sink.open()
        await sink.write("t0", [{"run": run, "payload": {"k": run}}])
        await sink.close()  # close flushes
    assert sqlite_rows(tmp_path / "rel.db", "SELECT run, payload FROM t ORDER BY run") == [
        (0, '{"k":0}'),
        (1, '{"k":1}'),
    ]


async def test_concurrent_first_writes_race_on_table_creation(pg_dsn: str, pg_schema: str) -> None:
    """Workers of one job create the table and the marker table at once; PostgreSQL's catalog race
    (a unique violation on pg_type) is retried, and every transaction lands exactly once."""
    sinks = [DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.race") for _ in range(6)]
    for sink in sinks:
        await sink.open()
    try:
        results = await asyncio.gather(
            *(sink.write_transaction([{"n": i}], ("job", f"task-{i}", 1)) for i, sink in enumerate(sinks))
        )
        assert results == [True] * 6
        connection = await asyncpg.connect(pg_dsn)
        try:
            rows = await connection.fetch(f'SELECT n FROM "{pg_schema}".race ORDER BY n')
        finally:
            await connection.close()
        assert [r["n"] for r in rows] == list(range(6))
    finally:
        for sink in sinks:
            await sink.close()


# ------------------------------------------------------------------------ reserved names, marker key

FOREIGN_MARKER_TABLES = {
    "no key": "",
    "a key on job_id only": ", PRIMARY KEY (job_id)",
    "a narrower unique key next to the right one": ", PRIMARY KEY (job_id, task_id, checkpoint_id), "
    "UNIQUE (job_id, task_id)",
}


@pytest.mark.parametrize(
    "table", ["heliosdb_sink_markers", "public.HELIOSDB_SINK_MARKERS", '"public"."heliosdb_sink_markers"']
)
def test_the_writer_refuses_the_marker_table_as_its_table(table: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        DatabaseSinkWriter(connection_string="sqlite:///x.db", table=table)


@pytest.mark.postgres
@pytest.mark.parametrize("shape", sorted(FOREIGN_MARKER_TABLES))
async def test_pg_a_marker_table_without_its_key_fails_the_write(
    pg_dsn: str, pg_schema: str, shape: str
) -> None:
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(
            f'CREATE TABLE "{pg_schema}".heliosdb_sink_markers (job_id TEXT NOT NULL, task_id TEXT NOT NULL, '
            f"checkpoint_id BIGINT NOT NULL{FOREIGN_MARKER_TABLES[shape]})"
        )
    finally:
        await connection.close()
    sink = DatabaseSinkWriter(connection_string=pg_dsn, table=f"{pg_schema}.alerts", key=None)
    await sink.open()
    try:
        with pytest.raises(DatabaseSinkError, match=r"needs exactly the primary key \(job_id, task_id"):
            await sink.write_transaction([{"alert": 1}], ("job-1", "s0-p0", 1))
    finally:
        await sink.close()
    assert await pg_fetch(pg_dsn, f'SELECT * FROM "{pg_schema}".heliosdb_sink_markers') == []
    assert await pg_types(pg_dsn, pg_schema, "alerts") == {}  # nothing written, not even the table


@pytest.mark.parametrize("shape", sorted(FOREIGN_MARKER_TABLES))
async def test_sqlite_a_marker_table_without_its_key_fails_the_write(tmp_path: Path, shape: str) -> None:
    db = tmp_path / "m.db"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE heliosdb_sink_markers (job_id TEXT NOT NULL, task_id TEXT NOT NULL, "
            f"checkpoint_id BIGINT NOT NULL{FOREIGN_MARKER_TABLES[shape]})"
        )
    connection.close()
    sink = DatabaseSinkWriter(connection_string=f"sqlite:///{db}", table="alerts", key=None)
    await sink.open()
    try:
        with pytest.raises(DatabaseSinkError, match=r"needs exactly the primary key \(job_id, task_id"):
            await sink.write_transaction([{"alert": 1}], ("job-1", "s0-p0", 1))
    finally:
        await sink.close()
    assert sqlite_rows(db, "SELECT * FROM heliosdb_sink_markers") == []
    assert sqlite_rows(db, "SELECT name FROM sqlite_master WHERE name = 'alerts'") == []
