"""``HELIOS_E2E_REQUIRE=1``: a kind scenario that skips, for whatever reason, fails instead.

The collection-time skip (no Docker, kind or kubectl) already stops the run in ``conftest``; this
hook covers every other way a scenario can skip: a ``pytest.skip`` in its body (the kind node lacks
the CPU or memory the example requests) or in a fixture. A CI job that must run the scenarios then
cannot pass by running none of them. ``conftest`` imports the hook; a child pytest loads it with ``-p``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import e2e_support as support
import pytest

PREFIX = "HELIOS_E2E_REQUIRE=1 but"


def required_failure(reason: str) -> str:
    return f"{PREFIX} the scenario was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or item.get_closest_marker("kind") is None:
        return
    if not support.Settings.from_env(os.environ).require:
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = required_failure(str(reason).removeprefix("Skipped: "))
