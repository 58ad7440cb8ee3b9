"""The operator's own metrics: what a scrape of the metrics port shows, and what kopf's handlers count."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heliosdb_streaming.kubernetes.operator import events, handlers
from heliosdb_streaming.kubernetes.operator.opmetrics import OperatorMetrics


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_leader_transitions_reconciles_and_errors_are_exposed() -> None:
    m = OperatorMetrics()
    m.watch_source = lambda: (4, 1)
    assert samples(m)[("heliosdb_operator_leader", ())] == 0
    m.set_leading(True)
    m.set_leading(True)  # still the same term
    m.reconciled("streamingjobs", "create", error=False)
    m.reconciled("streamingjobs", "create", error=True)
    got = samples(m)
    assert got[("heliosdb_operator_leader", ())] == 1
    assert got[("heliosdb_operator_leader_transitions_total", ())] == 1
    key = (("handler", "create"), ("resource", "streamingjobs"))
    assert got[("heliosdb_operator_reconciles_total", key)] == 2
    assert got[("heliosdb_operator_reconcile_errors_total", key)] == 1
    assert got[("heliosdb_operator_watch_restarts_total", ())] == 4
    assert got[("heliosdb_operator_watch_failures_total", ())] == 1


class Reconciler:
    """Stands in for the StreamingJobReconciler: raises what it is told to."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    async def reconcile_job(self, body: Any) -> None:
        if self.error is not None:
            raise self.error


async def test_handlers_count_calls_and_failures_but_not_expected_waits() -> None:
    m = OperatorMetrics()
    reconciler = Reconciler()
    registry = handlers.build_registry(
        reconciler,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        kopf.ConnectionInfo(server="http://127.0.0.1:9"),
        m,
    )
    (create,) = [
        h
        for h in registry._changing.get_all_handlers()
        if h.id == "create" and "streamingjobs" in str(h.selector)
    ]
    call: Any = create.fn  # kopf passes many more kwargs; the handler takes body and reason
    await call(body={}, reason="create")
    reconciler.error = events.waiting("job is restarting; will apply spec", 1)
    with pytest.raises(kopf.TemporaryError):
        await call(body={}, reason="create")
    reconciler.error = RuntimeError("API server unreachable")
    with pytest.raises(RuntimeError):
        await call(body={}, reason="create")
    assert m.reconciles[("streamingjobs", "create")] == 3
    assert m.errors[("streamingjobs", "create")] == 1  # the wait is not an error
