"""RotatingFile: the bound, whole lines, the newest lines kept, and a descriptor that follows rotation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heliosdb_streaming.runtime.rotation import RotatingFile, RotatingTextStream


def files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}*"))


def lines_of(paths: list[Path]) -> list[str]:
    return [line for p in paths for line in p.read_text().splitlines()]


def test_writes_past_the_bound_keep_every_file_bounded_and_the_newest_lines(tmp_path: Path) -> None:
    path = tmp_path / "out"
    target = RotatingFile(path, max_bytes=100, backups=2)
    for i in range(200):
        target.write(f"line {i:04d}\n".encode())  # 10 bytes each
    assert [p.name for p in files(path)] == ["out", "out.1", "out.2"]
    assert all(p.stat().st_size <= 100 for p in files(path))
    newest_first = [path, path.with_name("out.1"), path.with_name("out.2")]
    assert lines_of(list(reversed(newest_first))) == [f"line {i:04d}" for i in range(170, 200)]


def test_a_batch_of_lines_is_split_between_files_at_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "out"
    target = RotatingFile(path, max_bytes=64, backups=3)
    batch = "".join(f'{{"i": {i}}}\n' for i in range(20)).encode()  # 200 bytes in one write
    target.write(batch)
    kept = [path.with_name(f"out.{i}") for i in (3, 2, 1)] + [path]
    assert all(p.stat().st_size <= 64 for p in kept)
    assert lines_of(kept) == [f'{{"i": {i}}}' for i in range(20)]


def test_a_line_longer_than_the_bound_goes_whole_into_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "out"
    target = RotatingFile(path, max_bytes=16, backups=2)
    target.write(b"short\n")
    target.write(b"x" * 40 + b"\n")
    target.write(b"after\n")
    assert path.read_text() == "after\n"
    assert path.with_name("out.1").read_text() == "x" * 40 + "\n"
    assert path.with_name("out.2").read_text() == "short\n"


def test_a_descriptor_follows_the_rotation_and_its_own_writes_count(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        stream = RotatingTextStream(RotatingFile(path, max_bytes=50, backups=1, fd=fd))
        os.write(fd, b"direct write of 40 bytes, e.g. a crash\n")  # not through the stream
        stream.write("through the stream, 30 bytes\n")
        assert path.with_name("stderr.1").read_text() == "direct write of 40 bytes, e.g. a crash\n"
        os.write(fd, b"after the rotation\n")  # the descriptor now points at the new file
        assert path.read_text() == "through the stream, 30 bytes\nafter the rotation\n"
        assert stream.fileno() == fd
    finally:
        os.close(fd)


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RotatingFile(tmp_path / "out", max_bytes=0)
