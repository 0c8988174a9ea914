"""What both ends of a gateway <-> call actor stream connection share at the transport level:
writes that wait while the transport's buffer is over its high-water mark, and the connection's
loss as a future."""

from __future__ import annotations

import asyncio


class FlowControlledLink(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # nothing drains any more: release whoever waits
        if not self.lost.done():
            self.lost.set_result(None)

    async def drained(self) -> bool:
        """Until the transport takes more writes; False once the connection is lost."""
        await self._writable.wait()
        return not self.lost.done()
