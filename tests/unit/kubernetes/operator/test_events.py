"""kopf's retry lines of expected waits are logged but not posted as Events (``events.QUIET_WAITS``)."""

from __future__ import annotations

import logging

import kopf

from heliosdb_streaming.kubernetes.operator import events


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, message, None, None)


def test_waits_are_not_posted_but_other_errors_are() -> None:
    error = events.waiting("job is submitted; will apply spec", 1.0)
    assert isinstance(error, kopf.TemporaryError) and error.delay == 1.0
    wait = _record(f"Handler 'update' failed temporarily: {error}")
    assert events.QUIET_WAITS.filter(wait) is True  # still logged
    assert getattr(wait, "k8s_skip", False) is True  # kopf's own flag: its Event poster skips it
    for message in (
        "Handler 'update' failed temporarily: savepoint on cancel failed: timeout",  # a real problem
        f"Handler 'update' failed with an exception. Will retry. {error}",
    ):
        other = _record(message)
        assert events.QUIET_WAITS.filter(other) is True
        assert not getattr(other, "k8s_skip", False), message
