"""The worker's end of the control channel: commands in, heartbeats and the outcome out.

Commands (stop, pause, resume, checkpoint barriers and completions) arrive at any time; the control
loop only flips the data path's events or queues checkpoint messages for the processing loop, so it
never touches a task mid-batch. A lost connection ends the worker at once (exit code 3): the control
plane restarts the job from its last checkpoint. Heartbeats (counters, CPU, memory, connector
problems) come from a thread of their own, so a step that keeps the event loop busy for a long time
does not make the worker look dead or idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from heliosdb_streaming.runtime.checkpoint.participant import CheckpointParticipant
from heliosdb_streaming.runtime.datapath import QUEUE_BATCHES, DataPath
from heliosdb_streaming.runtime.protocol import WorkerChannel

logger = logging.getLogger("heliosdb_streaming.worker")  # one logger for all parts of a worker

HEARTBEAT_INTERVAL_S = 1.0


class ControlLink:
    """Receives the control plane's commands and sends it heartbeats, checkpoint acks and the outcome."""

    def __init__(self, channel: WorkerChannel | None, index: int, data: DataPath) -> None:
        self.channel = channel
        self.index = index
        self._data = data
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._heartbeats: HeartbeatThread | None = None
        self._started = time.monotonic()  # the worker's running time is measured from here

    async def listen(self, checkpoints: CheckpointParticipant) -> None:
        """The control loop: runs until cancelled, or ends the process when the channel is lost."""
        assert self.channel is not None
        while True:
            try:
                message = await self.channel.receive()
            except (ConnectionError, OSError, ValueError):
                message = None
            if message is None:
                logger.error("control plane connection lost; worker %d stops", self.index)
                os._exit(3)  # the control plane restarts the job from its last checkpoint
            kind = message.get("type")
            if kind == "stop":
                self._data.stop()
            elif kind == "pause":
                self._data.running.clear()
                logger.info("paused", extra={"task_id": None})
            elif kind == "resume":
                self._data.running.set()
                logger.info("resumed", extra={"task_id": None})
            elif kind == "checkpoint":
                checkpoints.on_barrier(message)
            elif kind == "checkpoint_complete":
                checkpoints.on_complete(message)

    async def send(self, message: dict[str, Any]) -> None:
        if self.channel is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send(message)

    def start_heartbeats(self) -> None:
        if self.channel is not None:
            self._heartbeats = HeartbeatThread(self.heartbeat_message, self.channel, HEARTBEAT_INTERVAL_S)
            self._heartbeats.start()

    def stop_heartbeats(self) -> None:
        heartbeats, self._heartbeats = self._heartbeats, None
        if heartbeats is not None:
            heartbeats.stop()

    async def report(self, outcome: str, error: str | None = None) -> None:
        """The last heartbeat, then the outcome ('finished', 'stopped', 'failed')."""
        self.stop_heartbeats()  # the last heartbeat goes right before the outcome, none after it
        if self.channel is None or self.channel.closed:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send(self.heartbeat_message())
            await self.channel.send({"type": outcome, "error": error})

    def heartbeat_message(self) -> dict[str, Any]:
        """The cumulative counters and resources; called from the heartbeat thread, so it copies
        what the event loop may change (each copy of a dict or list is atomic under the GIL)."""
        c = self._data.counters
        memory = self._process.memory_info()
        tasks = list(self._data.tasks.items())
        stage_tasks = list(self._data.stage_tasks.items())
        return {
            "type": "heartbeat",
            "events_in": c.events_in,
            "events_out": c.events_out,
            "errors": c.errors,
            "late_dropped": c.late_dropped,
            "backpressure_events": c.backpressure_events,
            "backpressure_ms": round(c.backpressure_ms, 3),
            # the real running time (not whole seconds): the average rate and the backpressure level
            # (time blocked on downstream / running time) are computed against it
            "running_ms": round((time.monotonic() - self._started) * 1000, 3),
            "pollers": sum(1 for r in list(self._data.readers) if self._data.has_tasks(r)),
            "source_lag": self._source_lag(),
            "queue_fill": self._data.queue.qsize() / QUEUE_BATCHES,
            "latency": dict(c.latency.counts),
            "cpu_percent": self._process.cpu_percent(None),
            "rss_bytes": memory.rss,
            "busy_ms": round(c.busy_now(), 3),  # the autoscaler's busy time
            "tasks": {
                sid: {"events_in": t.events_in, "events_out": t.events_out, "finished": t.finished}
                for sid, t in tasks
            },
            # the key-group tasks of later stages (``runtime/stages.py``): not splits
            "stage_tasks": {
                tid: {"events_in": t.events_in, "events_out": t.events_out, "errors": t.errors}
                for tid, t in stage_tasks
            },
            "problems": self._problems(),
        }

    def _source_lag(self) -> int | None:
        """Records the sources are behind their newest offset, summed over the sources that know it
        (a reader's optional ``lag()``); None when none does."""
        known = [lag for r in list(self._data.readers) if (lag := _lag_of(r)) is not None]
        return sum(known) if known else None

    def _problems(self) -> list[str]:
        """What the connectors are retrying now (their ``problem``), e.g. a broker out of reach."""
        found: list[str] = []
        for kind, connectors in (("source", list(self._data.readers)), ("sink", list(self._data.sinks))):
            for i, connector in enumerate(connectors):
                problem = getattr(connector, "problem", None)
                if problem:
                    found.append(f"{kind} {i}: {problem}")
        return found


def _lag_of(reader: Any) -> int | None:
    lag = getattr(reader, "lag", None)
    return lag() if lag is not None else None


class HeartbeatThread(threading.Thread):
    """Sends a heartbeat every ``interval_s`` from its own thread.

    A step that holds the event loop for seconds (a wide sliding window over a large batch) must not
    silence the worker: its CPU and memory stay visible and the control plane keeps hearing from it.
    """

    def __init__(self, beat: Callable[[], dict[str, Any]], channel: WorkerChannel, interval_s: float) -> None:
        super().__init__(name="heliosdb-heartbeat", daemon=True)
        self._beat = beat
        self._channel = channel
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                message = self._beat()
            except RuntimeError as e:  # a dict resized by the loop while copied: the next beat will do
                logger.debug("heartbeat skipped: %s", e)
                continue
            try:
                self._channel.send_now(message)
            except (ConnectionError, OSError):
                return  # the control loop sees the lost connection and stops the worker

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=5.0)
