"""The operator's own metrics: what a scrape of the metrics port shows, and what kopf's handlers count;
the conversion webhook served beside them."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import events, handlers, opmetrics
from heliosdb_streaming.kubernetes.operator.opmetrics import OperatorMetrics
from heliosdb_streaming.testing.ports import free_port


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


def self_signed(directory: Path) -> Path:
    """``tls.crt``/``tls.key`` for 127.0.0.1 (as cert-manager's self-signed Issuer writes them)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "tls.key"),
         "-out", str(directory / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    return directory / "tls.crt"


async def test_conversion_webhook_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/convert`` as the API server calls it: a ConversionReview over HTTPS on the webhook port,
    from a replica that does not lead (every replica answers); plain HTTP on the metrics port too."""
    ca = self_signed(tmp_path)
    monkeypatch.setenv(opmetrics.TLS_DIR_ENV, str(tmp_path))
    webhook_port = free_port()
    old = {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": "StreamingJob",
        "metadata": {"name": "j"},
        "spec": {
            "config": {"checkpoint_interval_ms": 500},
            "sources": [{"type": "datagen", "config": {"rate_per_sec": 5}}],
        },
    }
    review = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": "u-1", "desiredAPIVersion": crds.API_VERSION, "objects": [old]},
    }
    context = ssl.create_default_context(cafile=str(ca))
    served = opmetrics.serve(OperatorMetrics(), "127.0.0.1", 0, webhook_port=webhook_port)
    async with served as (host, port), aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{webhook_port}{crds.WEBHOOK_PATH}"
        async with session.post(url, json=review, ssl=context) as response:
            assert response.status == 200
            answer = await response.json()
        async with session.post(f"http://{host}:{port}{crds.WEBHOOK_PATH}", data=b"not json") as bad:
            assert bad.status == 400
    (converted,) = answer["response"]["convertedObjects"]
    assert answer["response"]["uid"] == "u-1" and answer["response"]["result"]["status"] == "Success"
    assert converted["apiVersion"] == crds.API_VERSION
    assert converted["spec"] == {
        "config": {"checkpointIntervalMs": 500},
        "sources": [{"type": "datagen", "config": {"ratePerSec": 5}}],
    }
