"""The worker channel server: where a run's workers connect back, and what their messages do.

Each worker opens one TCP connection to ``address`` and says hello with its run's token (the
launcher handed it over); a connection without a known token, or for another job, is closed at once.
Messages are then dispatched: checkpoint acks, failures and "drained" to the run's
``CheckpointCoordinator``; heartbeats to the job's metrics (and the problems they report to the job's
message); log records to the job's log; a worker's outcome (finished, stopped, failed) to its run.
``broadcast`` sends the control plane's commands (pause, resume, stop, checkpoint barriers) to a run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

from heliosdb_streaming.control.entry import JobEntry, Run, problems_message
from heliosdb_streaming.control.jobs import JobTable
from heliosdb_streaming.runtime.protocol import Channel


async def broadcast(run: Run, message: dict[str, Any]) -> None:
    """Sends ``message`` to every connected worker of ``run``; a gone worker is skipped."""
    for channel in list(run.channels.values()):
        with contextlib.suppress(ConnectionError, OSError):
            await channel.send(message)


class WorkerChannelServer:
    """``on_drained(entry, run)``: every worker of the run has read all its splits (the final checkpoint)."""

    def __init__(
        self, table: JobTable, host: str, port: int, on_drained: Callable[[JobEntry, Run], None]
    ) -> None:
        # where workers reach the control channel: loopback for local subprocesses; the operator
        # binds all interfaces on a fixed port so that pods can connect through its Service
        self.host = host
        self.port = port
        self.table = table
        self.on_drained = on_drained
        self.tokens: dict[str, Run] = {}  # the runs whose workers may connect, by token
        self.address = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, limit=2**24)
        port = self._server.sockets[0].getsockname()[1]
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        self.address = f"{host}:{port}"

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    def admit(self, run: Run) -> None:
        """The run's workers may connect from now on."""
        self.tokens[run.token] = run

    def refuse(self, run: Run) -> None:
        """The run is over: its token no longer opens a channel."""
        self.tokens.pop(run.token, None)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        try:
            hello = await asyncio.wait_for(channel.receive(), 10)
        except (TimeoutError, ValueError, ConnectionError, orjson.JSONDecodeError):
            hello = None
        run = self.tokens.get(str((hello or {}).get("token", "")))
        if hello is None or run is None or hello.get("job_id") != run.job_id:
            await channel.close()
            return
        index = int(hello["index"])
        entry = self.table.jobs[run.job_id]
        run.channels[index] = channel
        drained = run.drained_channels.setdefault(index, asyncio.Event())
        if run.stop_requested is not None:
            await channel.send({"type": "stop"})
        if len(run.channels) == run.parallelism:
            run.connected.set()
        try:
            while True:
                message = await channel.receive()
                if message is None:
                    break
                await self._on_message(entry, run, index, message)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            drained.set()
            await channel.close()

    async def _on_message(self, entry: JobEntry, run: Run, index: int, message: dict[str, Any]) -> None:
        kind = message.get("type")
        coordinator = run.coordinator
        if kind == "ack" and coordinator is not None:
            await coordinator.on_ack(index, message)
        elif kind == "checkpoint_failed" and coordinator is not None:
            coordinator.on_worker_failed(index, message)
        elif kind == "drained" and coordinator is not None:
            if coordinator.on_drained(index):
                self.on_drained(entry, run)
        elif kind == "heartbeat":
            entry.metrics.on_heartbeat(run.attempt, index, message)
            self._on_problems(entry, run, index, message.get("problems"))
        elif kind == "log":
            entry.log.write(
                str(message.get("level", "info")),
                str(message.get("message", "")),
                message.get("task_id"),
                message.get("ts"),
                worker=index,
            )
        elif kind in ("finished", "stopped", "failed"):
            run.outcomes[index] = (kind, message.get("error"))

    def _on_problems(self, entry: JobEntry, run: Run, index: int, reported: Any) -> None:
        """Shows what a run's workers are retrying (a broker out of reach) in the job's message and
        log while it lasts, and puts the message back once it is over."""
        problems = tuple(str(p) for p in reported or ())
        if run.problems.get(index, ()) == problems:
            return
        run.problems[index] = problems
        record = entry.record
        if record.status.terminal:
            return
        text = problems_message(run.problems)
        if text is not None:
            if record.message != text:
                if record.message != run.problem_message:
                    run.message_before_problems = record.message
                record.message = run.problem_message = text
                entry.log.write("warn", text)
                self.table.store.save(record)
            return
        entry.log.write("info", "Recovered: every worker reports its connectors working")
        if run.problem_message is not None and record.message == run.problem_message:
            record.message = run.message_before_problems
            self.table.store.save(record)
        run.problem_message = run.message_before_problems = None
