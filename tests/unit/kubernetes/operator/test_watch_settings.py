"""How long the operator's watch streams last (``HELIOS_WATCH_TIMEOUT_S``): the environment the chart
or a test sets reaches kopf's settings; a nonsense value still leaves kopf a working timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliosdb_streaming.kubernetes.operator import handlers
from heliosdb_streaming.kubernetes.operator.app import OperatorOptions


def test_the_default_is_a_minute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HELIOS_WATCH_TIMEOUT_S", raising=False)
    options = OperatorOptions.from_env(tmp_path)
    watching = handlers.settings([], options.watch_timeout_s).watching
    assert (watching.server_timeout, watching.client_timeout) == (60.0, 75.0)


@pytest.mark.parametrize(("value", "server"), [("15", 15.0), ("0", 1.0), ("-3", 1.0)])
def test_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, server: float
) -> None:
    monkeypatch.setenv("HELIOS_WATCH_TIMEOUT_S", value)
    options = OperatorOptions.from_env(tmp_path)
    watching = handlers.settings(["team-a"], options.watch_timeout_s).watching
    assert (watching.server_timeout, watching.client_timeout) == (server, server + 15)
