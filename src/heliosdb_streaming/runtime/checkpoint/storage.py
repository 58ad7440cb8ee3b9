"""Where checkpoints live: a local or mounted directory (``file://``) or an S3 bucket (``s3://``).

Paths are relative and ``/``-separated (``job-1/chk-3/s0-p1.snap``); ``..``, ``.``, empty segments,
backslashes and absolute paths are rejected with ``ValueError``. A *prefix* names a directory: the
prefix ``job-1/chk-1`` covers ``job-1/chk-1`` itself and everything under ``job-1/chk-1/``, never
``job-1/chk-10``; the empty prefix covers everything. ``list`` returns full storage paths (the form
``read`` takes), sorted.

All methods are coroutines; blocking I/O runs in ``asyncio.to_thread``. Credentials are handed to the
S3 client only: they appear in no attribute, repr or error message of these classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

__all__ = [
    "CheckpointStorage",
    "FileCheckpointStorage",
    "S3CheckpointStorage",
    "storage_from_uri",
]

_TMP_MARK = ".helios-tmp-"
T = TypeVar("T")


@runtime_checkable
class CheckpointStorage(Protocol):
    """A flat namespace of immutable-once-written objects addressed by relative paths."""

    def uri(self, path: str) -> str:
        """The URI users see for ``path``: ``file:///abs/dir/path`` or ``s3://bucket/prefix/path``."""
        ...

    async def write(self, path: str, data: bytes) -> None:
        """Writes ``data`` to ``path`` atomically (readers see the old object or the new one, whole)."""
        ...

    async def write_file(self, path: str, local: Path) -> int:
        """Uploads the local file ``local`` to ``path`` atomically; returns the bytes written."""
        ...

    async def read(self, path: str) -> bytes:
        """The object at ``path``; ``FileNotFoundError`` if there is none."""
        ...

    async def read_to_file(self, path: str, local: Path) -> None:
        """Downloads ``path`` into the local file ``local`` (parents created); ``FileNotFoundError``."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def list(self, prefix: str) -> list[str]:
        """Paths of every object under ``prefix`` (recursive), as full storage paths, sorted."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under ``prefix``; returns how many were deleted."""
        ...

    async def delete(self, path: str) -> None:
        """Deletes ``path``; a missing object is fine."""
        ...


def _check_path(path: str, *, prefix: bool = False) -> str:
    """Validates a relative storage path (or prefix, which may be empty or end with ``/``)."""
    if not isinstance(path, str):
        raise TypeError(f"storage path must be a str, not {type(path).__name__}")
    if path.startswith("/"):
        raise ValueError(f"storage path must be relative, got {path!r}")
    if prefix:
        path = path.rstrip("/")
        if path == "":
            return ""
    if not path:
        raise ValueError("storage path must not be empty")
    if "\\" in path or "\x00" in path:
        raise ValueError(f"storage path must be '/'-separated without backslashes or NUL: {path!r}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage path must not contain empty, '.' or '..' segments: {path!r}")
        if segment.startswith(_TMP_MARK):
            raise ValueError(f"storage path segments must not start with {_TMP_MARK!r}: {path!r}")
    return path


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


# --------------------------------------------------------------------------------------------- file


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A snapshot holds a job's state (records, keys, offsets): only the user who wrote it may read it.
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, each made 0700 (``mkdir(parents=True)`` would give
    the parents the default mode)."""
    missing = []
    for d in (directory, *directory.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=_DIR_MODE)


class FileCheckpointStorage:
    """Checkpoints in a directory of the local (or a mounted, shared) file system.

    Writes go to a temporary file in the target directory, are fsynced and renamed over the target,
    and the directory is fsynced: a crash leaves the old object or the new one, never a torn one.
    Directories it makes are 0700 and files 0600: a snapshot holds the job's state.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"FileCheckpointStorage({str(self.root)!r})"

    def uri(self, path: str) -> str:
        base = self.root.as_uri()
        if path == "":
            return base
        return f"{base.rstrip('/')}/{_check_path(path)}"

    def _local(self, path: str) -> Path:
        return self.root.joinpath(*_check_path(path).split("/"))

    # -- blocking helpers (run in threads)

    def _write_atomic(self, target: Path, fill: Any) -> int:
        """Creates ``target`` from ``fill(fileobj) -> bytes written`` via temp file, fsync and rename."""
        for attempt in range(3):
            make_private_dirs(target.parent)
            tmp = target.parent / f"{_TMP_MARK}{target.name}.{uuid.uuid4().hex}"
            try:
                f = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE), "wb")
            except FileNotFoundError:  # the directory was pruned concurrently: make it again
                if attempt == 2:
                    raise
                continue
            try:
                with f:
                    written = int(fill(f))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
            return written
        raise AssertionError("unreachable")

    def _write_sync(self, path: str, data: bytes) -> None:
        view = memoryview(data)
        self._write_atomic(self._local(path), lambda f: f.write(view))

    def _write_file_sync(self, path: str, local: Path) -> int:
        target = self._local(path)
        with Path(local).open("rb") as src:
            return self._write_atomic(target, lambda f: _copy(src, f))

    def _read_sync(self, path: str) -> bytes:
        local = self._local(path)
        if local.is_dir():
            raise FileNotFoundError(self.uri(path))
        try:
            return local.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(self.uri(path)) from None

    def _read_to_file_sync(self, path: str, local: Path) -> None:
        source = self._local(path)
        if source.is_dir():
            raise FileNotFoundError(self.uri(path))
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f"{_TMP_MARK}{local.name}.{uuid.uuid4().hex}"
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, local)
        except (FileNotFoundError, NotADirectoryError):
            tmp.unlink(missing_ok=True)
            if not source.is_file():
                raise FileNotFoundError(self.uri(path)) from None
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        base = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        if base.is_file():
            yield prefix, base
            return
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            directory = Path(dirpath)
            for name in filenames:
                if name.startswith(_TMP_MARK):
                    continue
                local = directory / name
                yield local.relative_to(self.root).as_posix(), local

    def _list_sync(self, prefix: str) -> list[str]:
        return sorted(rel for rel, _ in self._walk(_check_path(prefix, prefix=True)))

    def _delete_prefix_sync(self, prefix: str) -> int:
        prefix = _check_path(prefix, prefix=True)
        count = 0
        for _rel, local in list(self._walk(prefix)):
            try:
                local.unlink()
                count += 1
            except FileNotFoundError:
                pass
        base = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        if base.is_dir():  # prune the now empty directories under (and including) the prefix
            for dirpath, _dirnames, _filenames in sorted(os.walk(base), key=lambda t: -len(t[0])):
                directory = Path(dirpath)
                if directory != self.root:
                    with contextlib.suppress(OSError):  # not empty (a concurrent writer) or gone
                        directory.rmdir()
        return count

    def _delete_sync(self, path: str) -> None:
        local = self._local(path)
        if local.is_dir():
            return
        local.unlink(missing_ok=True)

    # -- the protocol

    async def write(self, path: str, data: bytes) -> None:
        _check_path(path)
        await asyncio.to_thread(self._write_sync, path, data)

    async def write_file(self, path: str, local: Path) -> int:
        _check_path(path)
        return await asyncio.to_thread(self._write_file_sync, path, local)

    async def read(self, path: str) -> bytes:
        _check_path(path)
        return await asyncio.to_thread(self._read_sync, path)

    async def read_to_file(self, path: str, local: Path) -> None:
        _check_path(path)
        await asyncio.to_thread(self._read_to_file_sync, path, local)

    async def exists(self, path: str) -> bool:
        local = self._local(path)
        return await asyncio.to_thread(local.is_file)

    async def list(self, prefix: str) -> list[str]:
        _check_path(prefix, prefix=True)
        return await asyncio.to_thread(self._list_sync, prefix)

    async def delete_prefix(self, prefix: str) -> int:
        _check_path(prefix, prefix=True)
        return await asyncio.to_thread(self._delete_prefix_sync, prefix)

    async def delete(self, path: str) -> None:
        _check_path(path)
        await asyncio.to_thread(self._delete_sync, path)


def _copy(src: io.BufferedReader, dst: io.BufferedWriter, chunk: int = 1 << 20) -> int:
    total = 0
    while block := src.read(chunk):
        dst.write(block)
        total += len(block)
    return total


# ----------------------------------------------------------------------------------------------- S3


def _parse_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """``host[:port]`` or ``http(s)://host[:port]`` -> (``host[:port]``, secure)."""
    endpoint = endpoint.strip()
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(
                f"S3 endpoint must be host[:port] or http(s)://host[:port], got {parts.scheme}://{parts.hostname}"
            )
        if parts.username or parts.password:
            raise ValueError("S3 endpoint must not contain credentials; pass access_key/secret_key")
        scheme_secure = parts.scheme == "https"
        if secure is not None and secure != scheme_secure:
            raise ValueError(f"S3 endpoint scheme {parts.scheme!r} contradicts secure={secure}")
        return parts.netloc, scheme_secure
    if not endpoint or "/" in endpoint or "@" in endpoint:
        raise ValueError("S3 endpoint must be host[:port] or http(s)://host[:port]")
    return endpoint, True if secure is None else secure


class S3CheckpointStorage:
    """Checkpoints in an S3 bucket (AWS S3, MinIO, Ceph, moto... through the ``minio`` client).

    Objects are ``<prefix>/<path>`` in ``bucket``. The bucket is created on the first *write* if
    missing; reads, listings and deletes never create it (a missing bucket holds no objects), so
    locating a savepoint has no side effect. PUTs are atomic in S3, so ``write`` and ``write_file``
    need no temporary objects. Failures are ``OSError``s that say why: ``ConnectionError`` when the
    endpoint cannot be reached, ``FileNotFoundError`` for a missing object. ``timeout_s`` bounds each
    connect and read and turns the client's retries off (for answers a user waits for).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool | None = None,
        region: str | None = None,
        session_token: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        import certifi
        import urllib3
        from minio import Minio

        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if (access_key is None) != (secret_key is None):
            raise ValueError(
                "S3 access_key and secret_key must be given together (or neither, for anonymous)"
            )
        self.bucket = bucket
        self.prefix = _check_path(prefix, prefix=True)
        self.endpoint, self.secure = _parse_endpoint(endpoint, secure)
        self.region = region
        http_client = None
        if timeout_s is not None:  # as minio's own client, but bounded and without retries
            http_client = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                maxsize=10,
                cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
            )
        self._client = Minio(
            self.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            secure=self.secure,
            region=region,
            http_client=http_client,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3CheckpointStorage({self.uri('')!r}, endpoint={self.endpoint!r}, secure={self.secure})"

    def uri(self, path: str) -> str:
        key = self._key(path) if path else self.prefix
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _key(self, path: str) -> str:
        path = _check_path(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _key_prefix(self, prefix: str) -> str:
        prefix = _check_path(prefix, prefix=True)
        if not prefix:
            return f"{self.prefix}/" if self.prefix else ""
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    # -- blocking helpers (run in threads)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, location=self.region)
                except S3Error as e:
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def _write_sync(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        self._client.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def _write_file_sync(self, key: str, local: Path) -> int:
        self._ensure_bucket()
        size = Path(local).stat().st_size
        self._client.fput_object(self.bucket, key, str(local))
        return size

    def _read_sync(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self._client.get_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def _read_to_file_sync(self, key: str, local: Path) -> None:
        from minio.error import S3Error

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.fget_object(self.bucket, key, str(local))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from None
            raise

    def _exists_sync(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"):
                return False
            raise
        return True

    def _keys_under(self, prefix: str) -> list[str]:
        from minio.error import S3Error

        prefix = _check_path(prefix, prefix=True)
        keys: list[str] = []
        listing = self._client.list_objects(self.bucket, prefix=self._key_prefix(prefix), recursive=True)
        try:
            objects = list(listing)
        except S3Error as e:
            if e.code == "NoSuchBucket":
                return []  # no bucket, no objects
            raise
        for obj in objects:
            key = obj.object_name
            if key is None or obj.is_dir:
                continue
            if self.prefix and not key.startswith(self.prefix + "/"):
                continue
            if _under(self._rel(key), prefix):
                keys.append(key)
        return keys

    def _list_sync(self, prefix: str) -> list[str]:
        return sorted(self._rel(key) for key in self._keys_under(prefix))

    def _delete_prefix_sync(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        keys = self._keys_under(prefix)
        if not keys:
            return 0
        errors = list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            first = errors[0]
            raise OSError(
                f"could not delete {len(errors)} of {len(keys)} objects under {self.uri(prefix or '')}; "
                f"first: {first.name}: {first.code} {first.message}"
            )
        return len(keys)

    def _delete_sync(self, key: str) -> None:
        from minio.error import S3Error

        try:
            self._client.remove_object(self.bucket, key)
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs a blocking helper, its failures turned into ``OSError``s that name the endpoint."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            return fn(*args)
        except S3Error as e:
            raise OSError(f"S3 at {self.endpoint} refused it: {e.code}: {e.message}") from None
        except MinioException as e:
            raise OSError(f"S3 at {self.endpoint} failed: {e}") from None
        except urllib3.exceptions.HTTPError as e:
            reason = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) else e
            raise ConnectionError(f"cannot reach S3 at {self.endpoint}: {_reason(reason)}") from None

    # -- the protocol

    async def write(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(self._call, self._write_sync, self._key(path), data)

    async def write_file(self, path: str, local: Path) -> int:
        return await asyncio.to_thread(self._call, self._write_file_sync, self._key(path), local)

    async def read(self, path: str) -> bytes:
        return await asyncio.to_thread(self._call, self._read_sync, self._key(path))

    async def read_to_file(self, path: str, local: Path) -> None:
        await asyncio.to_thread(self._call, self._read_to_file_sync, self._key(path), local)

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(self._call, self._exists_sync, self._key(path))

    async def list(self, prefix: str) -> list[str]:
        _check_path(prefix, prefix=True)
        return await asyncio.to_thread(self._call, self._list_sync, prefix)

    async def delete_prefix(self, prefix: str) -> int:
        _check_path(prefix, prefix=True)
        return await asyncio.to_thread(self._call, self._delete_prefix_sync, prefix)

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._call, self._delete_sync, self._key(path))


def _reason(error: BaseException | None) -> str:
    """The innermost cause of a connection failure, as its own words say it."""
    text = str(error)
    return text.split(": ", 1)[-1] if "Failed to establish" in text or "Max retries" in text else text


# --------------------------------------------------------------------------------------------- URIs

S3_OPTION_KEYS = frozenset({"endpoint", "access_key", "secret_key", "secure", "region", "session_token"})
DEFAULT_S3_ENDPOINT = "s3.amazonaws.com"


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false (1/0, yes/no, on/off)")


def _option(options: Mapping[str, str], key: str, *env_names: str) -> str | None:
    value = options.get(key)
    if value is not None and value != "":
        return str(value)
    for name in env_names:
        env = os.environ.get(name)
        if env:
            return env
    return None


def storage_from_uri(
    uri: str, options: dict[str, str] | None = None, *, timeout_s: float | None = None
) -> CheckpointStorage:
    """Opens the storage a checkpoint URI names.

    ``file:///abs/dir`` or a plain path (relative ones resolve against the working directory) ->
    :class:`FileCheckpointStorage`. ``s3://bucket[/prefix]`` -> :class:`S3CheckpointStorage`, configured
    by ``options`` keys ``endpoint`` (``host:port`` or ``http(s)://host:port``), ``access_key``,
    ``secret_key``, ``secure``, ``region`` (and ``session_token``), falling back to the environment:
    ``HELIOS_S3_ENDPOINT`` (default ``s3.amazonaws.com``), ``AWS_ACCESS_KEY_ID``/``MINIO_ACCESS_KEY``,
    ``AWS_SECRET_ACCESS_KEY``/``MINIO_SECRET_KEY``, ``HELIOS_S3_SECURE`` (default true), ``AWS_REGION``
    (and ``AWS_SESSION_TOKEN``). Without credentials the client is anonymous. ``timeout_s`` bounds an
    S3 client's every connect and read, without retries (see :class:`S3CheckpointStorage`).
    """
    options = dict(options or {})
    unknown = sorted(set(options) - S3_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown checkpoint storage options {unknown}; known: {sorted(S3_OPTION_KEYS)}")
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("checkpoint storage URI must be a non-empty string")
    uri = uri.strip()
    if "://" not in uri:
        looks_like_scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri)
        if looks_like_scheme:
            raise ValueError(
                f"unsupported checkpoint storage URI {looks_like_scheme.group(0)!r}...: "
                "use file:///abs/path, a plain path or s3://bucket/prefix"
            )
        return FileCheckpointStorage(Path(uri))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise ValueError(f"checkpoint storage URI must not have a query or fragment: {scheme}://...")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"file:// checkpoint URI must be file:///absolute/path (no host), got host {parts.netloc!r}"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError("file:// checkpoint URI must hold an absolute path: file:///absolute/path")
        return FileCheckpointStorage(Path(path))
    if scheme == "s3":
        if parts.username or parts.password or "@" in parts.netloc:
            raise ValueError(
                "s3:// checkpoint URI must not contain credentials; use options or the environment"
            )
        bucket = parts.netloc
        if not bucket:
            raise ValueError("s3:// checkpoint URI needs a bucket: s3://bucket[/prefix]")
        prefix = unquote(parts.path).strip("/")
        try:
            _check_path(prefix, prefix=True)
        except ValueError:
            raise ValueError("s3:// checkpoint URI prefix must be a relative '/'-separated path") from None
        endpoint = _option(options, "endpoint", "HELIOS_S3_ENDPOINT") or DEFAULT_S3_ENDPOINT
        secure_text = _option(options, "secure", "HELIOS_S3_SECURE")
        secure = None if secure_text is None else _parse_bool("secure (HELIOS_S3_SECURE)", secure_text)
        return S3CheckpointStorage(
            bucket,
            prefix,
            endpoint=endpoint,
            access_key=_option(options, "access_key", "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY"),
            secret_key=_option(options, "secret_key", "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY"),
            secure=secure,
            region=_option(options, "region", "AWS_REGION"),
            session_token=_option(options, "session_token", "AWS_SESSION_TOKEN"),
            timeout_s=timeout_s,
        )
    raise ValueError(
        f"unsupported checkpoint storage URI scheme {scheme!r}: use file:///abs/path or s3://bucket/prefix"
    )
