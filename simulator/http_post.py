"""The stand-in's outbound HTTP: POSTs to a gateway (Event Grid deliveries, Call Automation
callbacks) over one pooled aiohttp session.

aiohttp rather than httpx: the stand-in places a burst's calls on the same cores as the gateway
it measures, and with 20 POSTs in flight httpx spent about 2.4 ms of CPU on each (its pool
looks at every connection's socket for every request), aiohttp about 0.3 ms
(bench/RESULTS.md, call_setup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

MAX_CONNECTIONS = 1000  # a scenario's callers post at once, each on a connection of its own


class PostFailed(Exception):
    """The gateway could not be reached: refused, reset or timed out (the reason is the error's
    type name, never a URL: URLs carry the call's secrets)."""


@dataclass(frozen=True, slots=True)
class Posted:
    status: int
    body: bytes


class Poster:
    """Create inside a running event loop (``AcsStandIn.start``); ``close`` when done."""

    def __init__(self, timeout_s: float) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            trust_env=False,  # loopback gateways must never be reached through a proxy
            auto_decompress=False,
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Posted:
        """POST ``body``; the gateway's status and body, or PostFailed."""
        try:
            async with self._session.post(url, data=body, headers=dict(headers)) as response:
                return Posted(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PostFailed(type(exc).__name__) from exc

    async def close(self) -> None:
        await self._session.close()
