"""Keyed state stores of transformations: in memory and RocksDB (the ``StateStore`` contract)."""
