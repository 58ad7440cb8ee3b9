"""RocksDB keyed state (rocksdict): state larger than memory, one database directory per store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Checkpoint, Options, Rdict, WriteBatch


class RocksDBStateStore:
    """The ``rocksdb`` state backend. Values are stored as orjson bytes under UTF-8 keys."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.path = path
        self._db = Rdict(str(path), options)
        # (size, sha256) of the immutable files (SSTs) of this open database by file name, filled by
        # incremental snapshots. File numbers are never reused within a database, so a name keeps
        # naming the same content for as long as this instance is open.
        self.file_digests: dict[str, tuple[int, str]] = {}

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._db.get(key.encode())
        return default if raw is None else orjson.loads(raw)

    def put(self, key: str, value: Any) -> None:
        self._db[key.encode()] = orjson.dumps(value)

    def delete(self, key: str) -> None:
        del self._db[key.encode()]

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        start = prefix.encode()
        for raw_key, raw_value in self._db.items(from_key=start):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if not key.startswith(prefix):
                break
            yield key, orjson.loads(raw_value)

    def write_batch(self, puts: dict[str, Any], deletes: set[str]) -> None:
        """Puts and deletes many entries in one RocksDB write batch (atomic, and far cheaper than one
        write each): how a write-back cache over this store hands over its changes."""
        batch = WriteBatch(raw_mode=True)
        for key, value in puts.items():
            batch.put(key.encode(), orjson.dumps(value))
        for key in deletes:
            batch.delete(key.encode())
        self._db.write(batch)

    def flush(self) -> None:
        """Writes the memtable to SST files (blocking; safe to run in a worker thread)."""
        self._db.flush()

    def checkpoint(self, target: Path) -> None:
        """Creates a RocksDB checkpoint in ``target`` (which must not exist): an openable copy of the
        database as of now, with its SST files hard-linked when ``target`` is on the same file system.
        Flushes the memtable first, so it is quick after :meth:`flush`."""
        if target.exists():
            raise FileExistsError(f"checkpoint directory already exists: {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        Checkpoint(self._db).create_checkpoint(str(target))

    def close(self) -> None:
        self._db.close()
