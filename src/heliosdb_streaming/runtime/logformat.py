"""Worker log lines as JSON on stderr, for substrates whose log store is the process's output.

On Kubernetes the pod log API is where a worker's logs live, so a worker in a pod writes each record
as one JSON object per line, with the same fields as the job log of the embedded substrate
(``timestamp`` ISO-8601 UTC, ``level`` debug/info/warn/error, ``message``, ``task_id``, ``worker``);
readers parse them back and filter by level, tail and limit as they do the job log.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType

import orjson

from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}


class JsonLineFormatter(logging.Formatter):
    def __init__(self, worker_index: int) -> None:
        super().__init__()
        self.worker_index = worker_index

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        line = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": LEVELS.get(record.levelname, "info"),
            "message": mask_secrets(message),
            "task_id": getattr(record, "task_id", None),
            "worker": self.worker_index,
        }
        return orjson.dumps(line).decode()


class MaskingFormatter(logging.Formatter):
    """A plain-text formatter whose lines (tracebacks included) never hold a password."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class MaskingFilter(logging.Filter):
    """Masks a record in place, before any handler sees it: on a logger whose records reach handlers
    we do not format ourselves (kopf posts its ``kopf.objects`` warnings as Kubernetes Events, with the
    exception's text and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


def masked_stderr_handler(fmt: str) -> logging.Handler:
    """The stderr handler of ``helios server`` and ``helios operator``: their own log lines (a
    sink's or a control request's error quoting a connection string) are masked as a worker's are."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(fmt))
    return handler


def configure_service_logging(verbose: bool) -> None:
    """Masked stderr logging of a long-running service (``helios operator``, ``helios jobmanager``),
    without a line per HTTP request (aiohttp's access log: the probes would flood it)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[masked_stderr_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")],
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


MASKING_FILTER = MaskingFilter()  # one instance: ``addFilter`` of it again is a no-op


def log_uncaught_exceptions(logger: logging.Logger) -> None:
    """Uncaught exceptions (of the main thread and of other threads) go through ``logger``, whose
    handlers mask secrets, instead of Python's default hooks, which print the traceback raw to stderr
    (the worker's stderr file, or the pod log): a driver's error quoting a connection string would
    otherwise be there in clear."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, tb)
            return
        logger.critical("uncaught exception", exc_info=(kind, error, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):
            return
        name = args.thread.name if args.thread is not None else "?"
        logger.critical(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = hook
    threading.excepthook = thread_hook
