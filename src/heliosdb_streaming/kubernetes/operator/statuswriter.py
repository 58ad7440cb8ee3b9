"""The one writer of StreamingJob status: the control plane's record projected onto the resource.

Kept apart from the reconciler because it runs on its own clock: one task projects every bound job
(``status.project``) and patches only what changed, posting an Event for each phase change. The control
plane's status callback (``mark``) wakes it, so ``running`` shows up within a moment, and a sweep
every ``STATUS_SWEEP_S`` picks up what changes without a callback (checkpoints, restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import events, pods, status
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.model.types import JobStatus

logger = logging.getLogger(__name__)

STATUS_SWEEP_S = 2.0


class StatusWriter:
    def __init__(
        self,
        client: kube.KubeClient,
        plane: ControlPlane,
        bindings: Bindings,
        pending_pods: Callable[[str], tuple[tuple[str, str, str], ...]] = lambda _job_id: (),
    ) -> None:
        """``pending_pods``: the worker pods of a job that cannot start (the launcher's watch sees them)."""
        self.client = client
        self.plane = plane
        self.bindings = bindings
        self.pending_pods = pending_pods
        self._written: dict[str, dict[str, Any]] = {}  # job id -> last status written (or seen)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def track(self, job_id: str, seen: dict[str, Any]) -> None:
        """Write the status of ``job_id`` from now on; ``seen`` is the status the resource has (the
        first patch is the difference to it). A job already tracked keeps what was written."""
        self._written.setdefault(job_id, seen)

    def forget(self, job_id: str) -> None:
        """The resource is gone: nothing more to write."""
        self._written.pop(job_id, None)

    def mark(self, job_id: str, _status: JobStatus | None = None) -> None:
        """The job changed: write its status soon (also the control plane's status listener)."""
        self._dirty.add(job_id)
        self._wake.set()

    async def write_status_forever(self) -> None:
        """Writes marked jobs at once, and every job every ``STATUS_SWEEP_S`` (checkpoints, restarts)."""
        loop = asyncio.get_running_loop()
        last_sweep = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), STATUS_SWEEP_S)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if loop.time() - last_sweep >= STATUS_SWEEP_S:
                last_sweep = loop.time()
                job_ids = list(self._written)
            else:
                job_ids = [j for j in dirty if j in self._written]
            for job_id in job_ids:
                try:
                    await self.write_status(job_id)
                except Exception as e:  # the API server is unreachable or refuses: try again next pass
                    logger.warning("could not write the status of %s: %s: %s", job_id, type(e).__name__, e)
                    self._dirty.add(job_id)

    async def write_status(self, job_id: str) -> None:
        binding = self.bindings.get(job_id)
        entry = self.plane.jobs.get(job_id)
        previous = self._written.get(job_id)
        if binding is None or entry is None or previous is None:
            return
        observed = status.Observed(
            parallelism=entry.config.parallelism,
            snapshots=tuple(entry.snapshots),
            upgrade=binding.upgrade,
            selector=kube.selector_text(pods.job_labels(binding.name)),
            observed_generation=binding.observed_generation,
            observed_nonce=binding.applied_nonce,
            generation=binding.generation,
            spec_pending=binding.spec_pending,
            pending_pods=self.pending_pods(job_id),
        )
        wanted = status.project(entry.record, observed, previous, datetime.now(UTC))
        patch = status.diff(previous, wanted)
        if not patch:
            return
        try:
            await self.client.patch(
                kube.STREAMINGJOBS, binding.namespace, binding.name, {"status": patch}, subresource="status"
            )
        except kube.NotFoundError:
            self._written.pop(job_id, None)
            return
        self._written[job_id] = {**previous, **wanted}
        for type_, reason, message in status.events(previous, wanted):
            await events.job_event(self.client, binding, type_, reason, message)
