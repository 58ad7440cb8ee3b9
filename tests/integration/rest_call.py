"""One REST call as the API tests make it: the status and the JSON body (whatever the content type)."""

from __future__ import annotations

from typing import Any

import aiohttp


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, **kw) as response:
        return response.status, await response.json(content_type=None)
