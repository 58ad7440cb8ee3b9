"""The kind end-to-end run: session fixtures, and the skip where Docker, kind or kubectl are absent.

Tests marked ``kind`` need a real cluster. When ``docker``, ``kind`` or ``kubectl`` is not on PATH, or
``docker info`` finds no engine, they are skipped at collection with the reason (``pytest -rs``
shows it) and no fixture runs, so ``make test`` passes over them in well under a second;
``HELIOS_E2E_REQUIRE=1`` turns that skip into an error for CI jobs that must run them, and with it
any other skip of a ``kind`` scenario (in its body or a fixture) fails it (``e2e_require``). The other
tests of this directory check the manifests, values and helpers and always run.

``kind_env`` (session): creates the kind cluster (``HELIOS_E2E_CLUSTER``, default ``helios-e2e``;
an existing one only with ``HELIOS_E2E_REUSE=1``), builds ``heliosdb-streaming:e2e`` from the
Dockerfile and loads it into the node (and ``heliosdb-streaming-userpkg:e2e``: the Dockerfile of
docs/python-functions.md on it, installing tests/userpkg), installs PostgreSQL, MinIO and Kafka from
``manifests/`` and the Helm chart, and reaches the API server, PostgreSQL and MinIO through
``kubectl port-forward``. Everything is removed afterwards unless ``HELIOS_E2E_KEEP=1``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from functools import cache

import e2e_support as support
import pytest
from e2e_cluster import KindEnv
from e2e_cluster import kind_env as start_kind_env
from e2e_require import pytest_runtest_makereport  # noqa: F401  (the hook, registered from here)


@cache
def _skip_reason() -> str | None:
    reason = support.skip_reason()
    return f"kind e2e: {reason}" if reason else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_cluster = [item for item in items if item.get_closest_marker("kind")]
    if not needs_cluster:
        return
    reason = _skip_reason()
    if reason is None:
        return
    if support.Settings.from_env(os.environ).require:
        pytest.exit(f"HELIOS_E2E_REQUIRE=1 but {reason}", returncode=pytest.ExitCode.USAGE_ERROR)
    for item in needs_cluster:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
async def kind_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KindEnv]:
    settings = support.Settings.from_env(os.environ)
    async with start_kind_env(settings, tmp_path_factory.mktemp("kind")) as env:
        yield env


@pytest.fixture
async def e2e(kind_env: KindEnv) -> AsyncIterator[KindEnv]:
    """The session's cluster for one test; the test's StreamingJobs and Savepoints are deleted
    after it (the operator's finalizers stop the jobs and delete savepoint files)."""
    yield kind_env
    await kind_env.kubectl(
        "delete", "streamingjobs,savepoints", "--all", "--wait=true", "--timeout=120s", timeout=130
    )
