"""Size-bounded files: ``path`` rotated to ``path.1`` .. ``path.N`` past a size, the oldest deleted.

One mechanism for every file the engine appends to without end: the job log (``embedded.logs.JobLog``),
a worker's stdout (where the ``print`` sink writes) and its stderr. The newest lines are always in
``path``; at most ``(backups + 1) * max_bytes`` stay on disk (a single longer line excepted).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3


def rotate_files(path: Path, backups: int) -> None:
    """Shifts ``path`` to ``path.1``, ``path.1`` to ``path.2``, ...; ``path.<backups>`` is deleted."""
    for i in range(backups, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        newer = path.with_name(f"{path.name}.{i - 1}") if i > 1 else path
        if i == backups and older.exists():
            older.unlink()
        if newer.exists():
            newer.rename(older)


class RotatingFile:
    """Appends bytes to ``path`` and rotates before it would pass ``max_bytes``, between lines.

    With ``fd``, that descriptor (a process's 1 or 2) is kept pointing at the current ``path``
    (``dup2`` after each rotation), so what the process writes there directly (an interpreter crash,
    a C library) lands in the bounded files too; the size is then read from the file itself.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        *,
        fd: int | None = None,
    ) -> None:
        if max_bytes < 1 or backups < 1:
            raise ValueError("max_bytes and backups must be at least 1")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd = fd
        path.parent.mkdir(parents=True, exist_ok=True)
        if fd is None:
            os.close(_open_append(path))
            self._size = path.stat().st_size
        else:
            self._point_fd_at_path()

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else self._size

    def write(self, data: bytes) -> None:
        """Appends ``data``; lines are never split between files (one longer than the bound goes
        whole into a file of its own)."""
        while data:
            size = self.size()
            if size + len(data) <= self.max_bytes:
                self._append(data)
                return
            cut = data.rfind(b"\n", 0, max(self.max_bytes - size, 0)) + 1
            if cut == 0 and size == 0:  # one line longer than the bound: it goes whole
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._append(data[:cut])
                data = data[cut:]
            if data:
                self.rotate()

    def rotate(self) -> None:
        rotate_files(self.path, self.backups)
        if self.fd is None:
            self._size = 0
        else:
            self._point_fd_at_path()

    def _append(self, data: bytes) -> None:
        if self.fd is None:
            # opened per write: a control plane with thousands of job logs holds no descriptor each
            fd = _open_append(self.path)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            self._size += len(data)
        else:
            _write_all(self.fd, data)

    def _point_fd_at_path(self) -> None:
        assert self.fd is not None
        new = _open_append(self.path)
        try:
            os.dup2(new, self.fd)
        finally:
            os.close(new)


class RotatingTextStream(io.TextIOBase):
    """A text stream (for ``sys.stdout`` / ``sys.stderr``) whose every write goes to a RotatingFile."""

    def __init__(self, target: RotatingFile) -> None:
        super().__init__()
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.target.write(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def fileno(self) -> int:
        if self.target.fd is None:
            raise io.UnsupportedOperation("fileno")
        return self.target.fd


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
