"""Checkpoints on the worker's side: storage (``file://`` and ``s3://``), state snapshots, task snapshots.

``storage`` holds the byte stores checkpoints are written to; ``snapshots`` turns state stores into
bytes and files in a storage and back (incremental for RocksDB: immutable SST files are shared by
checkpoints and uploaded once); ``tasks`` snapshots and restores whole tasks (source position, every
state store, exactly-once sink staging); ``participant`` is a worker's part in the protocol (barriers in,
snapshots and acks out, staged output committed on completion). The control plane's side is
``control/checkpoint_coordinator.py``.
"""
