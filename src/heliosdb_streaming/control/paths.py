"""Which local paths a job may read and write when it comes from a network client.

``helios server`` and the operator run jobs for clients that are not the server's user, so the files a
job names (file source and sink paths, SQLite sink files, ``file://`` checkpoint storage, ``file://``
start points) must resolve inside the server's allowed roots: its home, plus ``--allow-path`` dirs.
The native API and ``helios run`` (``AllowedRoots`` None) keep full access: the caller is the user.

Rules: ``~`` is the server user's home; a relative path is taken relative to ``base`` (the server's
home, the working directory of its workers), or refused when there is no ``base`` (the operator: a
pod's working directory is not the operator's). A path resolves with its symlinks and ``..``
(``os.path.realpath``); a directory or glob source also has each file it matches now resolved, so a
symlink in an allowed directory that points out of it is refused too. Checking reads the file system
(symlinks), so callers run it off the event loop; the decisions themselves have no other side effect.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.connectors import DatabaseSink, FileSink, FileSource
from heliosdb_streaming.model.errors import FieldError
from heliosdb_streaming.runtime.connectors.files import match_files, sink_file_path

SAMPLE_TASK = "0"  # stands for a task id in a sink path: ids are [A-Za-z0-9._-], never a separator


@dataclass(frozen=True, slots=True)
class AllowedRoots:
    """Resolved directories a job's files must stay in; ``base`` anchors relative paths (None: refused)."""

    roots: tuple[Path, ...]
    base: Path | None

    @classmethod
    def of(cls, dirs: Iterable[str | Path], *, base: str | Path | None) -> AllowedRoots:
        resolved = tuple(Path(os.path.realpath(Path(d).expanduser())) for d in dirs)
        if not resolved:
            raise ValueError("at least one allowed root is needed")
        return cls(resolved, Path(os.path.realpath(Path(base).expanduser())) if base is not None else None)

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def contains(self, path: Path) -> bool:
        """Whether a resolved absolute ``path`` is one of the roots or below one."""
        return any(path == root or root in path.parents for root in self.roots)

    def resolve(self, raw: str) -> Path:
        """``raw`` as the worker will open it, symlinks and ``..`` resolved; ValueError if relative
        without a ``base``."""
        p = Path(raw).expanduser()
        if not p.is_absolute():
            if self.base is None:
                raise ValueError(f"must be an absolute path on this server, got {raw!r}")
            p = self.base / p
        return Path(os.path.realpath(p))

    def worker_path(self, raw: str) -> str | None:
        """The path a worker opens for ``raw`` (not resolved), or None when it is relative without a base."""
        p = Path(raw).expanduser()
        if p.is_absolute():
            return str(p)
        return str(self.base / p) if self.base is not None else None

    def problem(self, raw: str, *, matches: Sequence[Path] = ()) -> str | None:
        """Why ``raw`` (and the files it ``matches``) may not be used here, or None when it may."""
        try:
            resolved = self.resolve(raw)
        except ValueError as e:
            return str(e)
        for path in (resolved, *(Path(os.path.realpath(m)) for m in matches)):
            if not self.contains(path):
                return f"{path} is outside the directories this server allows ({self.describe()})"
        return None


def local_location(uri: str) -> str | None:
    """The local path a ``file://`` URI or a plain path names; None for remote storage (``s3://``)."""
    text = uri.strip()
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.scheme.lower() != "file":
        return None
    return unquote(parts.path) or "/"


def sqlite_file(connection_string: str) -> str | None:
    """The file of a ``sqlite:///rel.db`` / ``sqlite:////abs.db`` connection string; None otherwise."""
    scheme, sep, rest = connection_string.partition("://")
    if not sep or scheme.lower() != "sqlite" or rest in ("", "/", "/:memory:", ":memory:"):
        return None
    return rest[1:] if rest.startswith("/") else rest


def job_path_errors(config: JobConfig, roots: AllowedRoots, *, prefix: str = "") -> list[FieldError]:
    """Every local path of ``config`` outside ``roots``, each with its field path (as the submit body
    names it, after ``prefix``: ``spec.`` for a StreamingJob)."""
    errors: list[FieldError] = []

    def check(field: str, raw: str, matches: Sequence[Path] = ()) -> None:
        why = roots.problem(raw, matches=matches)
        if why is not None:
            errors.append(FieldError(prefix + field, why))

    for i, source in enumerate(config.sources):
        if isinstance(source, FileSource):
            raw = source.config.path
            where = roots.worker_path(raw)
            try:
                found = match_files(where) if where is not None else []
            except OSError:
                found = []
            check(f"sources[{i}].config.path", raw, found)
    for i, sink in enumerate(config.sinks):
        if isinstance(sink, FileSink):
            check(f"sinks[{i}].config.path", str(sink_file_path(sink.config.path, SAMPLE_TASK)))
        elif isinstance(sink, DatabaseSink):
            db = sqlite_file(sink.config.connection_string)
            if db is not None:
                check(f"sinks[{i}].config.connection_string", db)
    if config.checkpoint_storage:
        local = local_location(config.checkpoint_storage)
        if local is not None:
            check("config.checkpoint_storage", local)
    return errors


def location_error(location: str, roots: AllowedRoots, field: str) -> FieldError | None:
    """A start point (``from_savepoint``, ``restoreFrom``) on the local file system outside ``roots``."""
    local = local_location(location)
    if local is None:
        return None
    why = roots.problem(local)
    return None if why is None else FieldError(field, why)
