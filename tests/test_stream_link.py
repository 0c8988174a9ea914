"""FlowControlledLink: writes wait while the transport is paused, and the loss ends the wait."""

import asyncio

from actors.stream_link import FlowControlledLink


async def test_drained_waits_while_paused_and_is_false_once_lost() -> None:
    link = FlowControlledLink()
    assert await link.drained()
    link.pause_writing()
    waiting = asyncio.create_task(link.drained())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    link.resume_writing()
    assert await waiting

    link.pause_writing()
    waiting = asyncio.create_task(link.drained())
    await asyncio.sleep(0.01)
    link.connection_lost(None)  # paused, then lost: the writer is released and told
    assert await waiting is False
    assert link.lost.done() and await link.drained() is False
