"""Files and directories only the server's user may read: the home holds connection strings.

``jobs.db``, every ``job.json`` and the job logs carry the jobs' configs, passwords included, so the
home is 0700 and what the control plane writes there is 0600 (as ``~/.ssh`` and a PostgreSQL data
directory are). Modes are given when a file is created, never set after it was readable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


from heliosdb_streaming.runtime.checkpoint.storage import make_private_dirs  # noqa: E402


def private_dir(path: Path) -> Path:
    """Creates ``path`` and its missing parents with mode 0700, and takes group and other access away
    from an existing ``path`` this user owns. A shared directory (sticky, like ``/tmp``) or one of
    another user is left as it is, with a warning: the files in it are private all the same."""
    make_private_dirs(path)
    tighten(path, DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Gives ``path`` at most ``mode`` (clears the group and other bits), when this user owns it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    current = stat.S_IMODE(st.st_mode)
    if current & ~mode & 0o777 == 0:
        return
    if st.st_uid != os.geteuid() or (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        logger.warning("%s is %04o and shared or not ours: left as it is", path, current)
        return
    os.chmod(path, current & mode)
    logger.info("%s was %04o, now %04o: it may hold connection strings", path, current, current & mode)


def private_file(path: Path) -> Path:
    """Creates ``path`` (0600) when missing, and tightens an existing one to 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    tighten(path, FILE_MODE)
    return path


def open_private(path: Path, *, append: bool = True) -> BinaryIO:
    """``path`` opened for binary writing (appending, or truncated), created 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
        if current & ~FILE_MODE:  # made before the home was private
            os.fchmod(fd, current & FILE_MODE)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Replaces the contents of ``path`` with ``data``; the file is 0600."""
    with open_private(path, append=False) as f:
        f.write(data)
