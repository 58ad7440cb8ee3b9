"""Checkpoint cost per state backend: ``python -m benchmarks.checkpoints [--large] [--storage URI]``.

For 10k and 1M keys (and 10M with ``--large``) and the memory and rocksdb backends, fills a store,
takes a first checkpoint, changes 100 keys, takes a second one, then restores the second, and prints
durations and bytes written to checkpoint storage (a temporary directory by default; ``--storage``
takes any checkpoint URI, e.g. ``s3://bucket/bench`` with the ``HELIOS_S3_*``/``AWS_*`` environment).
Bytes for rocksdb are the new shared files uploaded plus the manifest (which holds the small files).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.runtime.checkpoint.snapshots import (
    restore_memory,
    restore_rocksdb,
    snapshot_memory,
    snapshot_rocksdb,
)
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore

CHANGED = 100


def key(i: int) -> str:
    return f"card-{(i * 2654435761) % (1 << 32):010d}"  # scattered, as hashed keys are


def value(i: int) -> dict[str, Any]:
    return {"count": i, "sum": i * 1.25, "last_ms": 1_700_000_000_000 + i}


def fill(store: MemoryStateStore | RocksDBStateStore, n: int) -> None:
    for i in range(n):
        store.put(key(i), value(i))


def change(store: MemoryStateStore | RocksDBStateStore, n: int) -> None:
    step = max(1, n // CHANGED)
    for i in range(0, step * CHANGED, step):
        store.put(key(i), value(-i))


async def bench_memory(n: int, storage: CheckpointStorage, run: str) -> dict[str, Any]:
    store = MemoryStateStore()
    fill(store, n)
    row: dict[str, Any] = {"keys": n, "backend": "memory"}
    for attempt in (1, 2):
        if attempt == 2:
            change(store, n)
        started = time.perf_counter()
        data = snapshot_memory(store)
        await storage.write(f"{run}/memory-{n}/chk-{attempt}.snap", data)
        row[f"chk{attempt}_s"], row[f"chk{attempt}_bytes"] = time.perf_counter() - started, len(data)
    started = time.perf_counter()
    restored = restore_memory(await storage.read(f"{run}/memory-{n}/chk-2.snap"))
    row["restore_s"] = time.perf_counter() - started
    assert len(restored) == len(store)
    return row


async def bench_rocksdb(n: int, storage: CheckpointStorage, run: str, work: Path) -> dict[str, Any]:
    store = RocksDBStateStore(work / f"db-{n}")
    row: dict[str, Any] = {"keys": n, "backend": "rocksdb"}
    try:
        fill(store, n)
        manifest: dict[str, Any] = {}
        for attempt in (1, 2):
            if attempt == 2:
                change(store, n)
            started = time.perf_counter()
            manifest, written = await snapshot_rocksdb(store, storage, f"{run}/shared", work / "scratch")
            body = orjson.dumps(manifest)
            await storage.write(f"{run}/rocksdb-{n}/chk-{attempt}.snap", body)
            row[f"chk{attempt}_s"] = time.perf_counter() - started
            row[f"chk{attempt}_bytes"] = written + len(body)
        expected = store.get(key(0))
    finally:
        store.close()
    started = time.perf_counter()
    manifest = orjson.loads(await storage.read(f"{run}/rocksdb-{n}/chk-2.snap"))
    restored = await restore_rocksdb(manifest, storage, work / f"restored-{n}")
    row["restore_s"] = time.perf_counter() - started
    try:
        assert restored.get(key(0)) == expected
    finally:
        restored.close()
    return row


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", action="store_true", help="also 10M keys")
    parser.add_argument("--storage", help="checkpoint storage URI (default: a temporary directory)")
    args = parser.parse_args()
    sizes = [10_000, 1_000_000] + ([10_000_000] if args.large else [])
    with tempfile.TemporaryDirectory(prefix="helios-bench-chk-") as tmp:
        work = Path(tmp)
        storage = storage_from_uri(args.storage or str(work / "checkpoints"))
        run = f"bench-{uuid.uuid4().hex[:8]}"
        print(f"storage: {storage.uri(run)}")
        header = (
            f"{'keys':>10} {'backend':8} {'chk1 s':>8} {'chk1 bytes':>11} "
            f"{'chk2 s':>8} {'chk2 bytes':>11} {'restore s':>9}"
        )
        print(header)
        print("-" * len(header))
        try:
            for n in sizes:
                rows = [await bench_memory(n, storage, run), await bench_rocksdb(n, storage, run, work)]
                for r in rows:
                    print(
                        f"{r['keys']:>10,} {r['backend']:8} {r['chk1_s']:>8.3f} {human(r['chk1_bytes']):>11} "
                        f"{r['chk2_s']:>8.3f} {human(r['chk2_bytes']):>11} {r['restore_s']:>9.3f}",
                        flush=True,
                    )
                for path in await asyncio.to_thread(lambda: list(work.glob("restored-*"))):
                    await asyncio.to_thread(shutil.rmtree, path, True)
        finally:
            await storage.delete_prefix(run)
    print(f"(chk2 follows {CHANGED} changed keys; rocksdb bytes = new shared files + manifest)")


if __name__ == "__main__":
    asyncio.run(main())
