"""RocksDB keyed state (rocksdict): state larger than memory, one database directory per store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rocksdict import Options, Rdict


class RocksDBStateStore:
    """The ``rocksdb`` state backend. Values are stored as orjson bytes under UTF-8 keys."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.path = path
        self._db = Rdict(str(path), options)

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
            key = bytes(raw_key).decode()
            if not key.startswith(prefix):
                break
            yield key, orjson.loads(raw_value)

    def close(self) -> None:
        self._db.close()
