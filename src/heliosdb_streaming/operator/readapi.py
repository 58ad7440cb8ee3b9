"""The operator's internal read API: the REST API's GET routes over the operator's own control plane.

The operator hosts the control plane whose coordinators, metrics and savepoints are the truth about
jobs; the StreamingJob status is only a projection of it. ``helios server --substrate kubernetes``
reads details, metrics, checkpoints and savepoints from here (``operator.readclient``) and changes
jobs only through the resources, so this app serves no command routes. It is the REST app itself
(``create_app(read_only=True)``) over a ``JobManager`` that adopts the running plane, so both answer
with the same bodies, and it takes the same bearer token (``HELIOS_API_TOKEN``) when one is set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.job.manager import JobManager

logger = logging.getLogger(__name__)

DEFAULT_READ_PORT = 8082
SHUTDOWN_TIMEOUT_S = 2.0


def create_read_app(plane: ControlPlane, api_token: str | None = None) -> web.Application:
    """GET-only REST app over a started ``plane``; the plane stays owned (and closed) by the operator."""
    return create_app(JobManager.adopt(plane), api_token=api_token, read_only=True)


@contextlib.asynccontextmanager
async def serve(
    plane: ControlPlane, host: str, port: int, api_token: str | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Serves the read API on ``host:port`` (0 picks a port) until the block exits; yields the address."""
    runner = web.AppRunner(create_read_app(plane, api_token), shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info(
            "read API listening on http://%s:%d (auth %s)",
            bound_host,
            bound_port,
            "bearer token" if api_token else "off",
        )
        yield str(bound_host), int(bound_port)
    finally:
        await runner.cleanup()
