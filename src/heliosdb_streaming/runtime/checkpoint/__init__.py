"""Checkpoint storage (``file://`` and ``s3://``) and snapshots of state stores.

``storage`` holds the byte stores checkpoints are written to; ``snapshots`` turns state stores into
bytes and files in a storage and back (incremental for RocksDB: immutable SST files are shared by
checkpoints and uploaded once).
"""
