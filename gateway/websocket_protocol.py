"""The gateway's WebSocket server protocol: uvicorn's sans-I/O one, without a pause per message.

uvicorn pauses reading the socket after every message it queues for the app and resumes on the
app's next ``receive``: two ``epoll_ctl`` system calls and their event-loop bookkeeping per
20 ms media frame, about a quarter of the gateway's per-frame CPU (py-spy, bench data_plane).
This protocol lets up to ``MAX_QUEUED`` messages wait for the app before it pauses, so a call
that the app reads promptly never pauses at all, and a stalled one is still bounded.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

MAX_QUEUED = 32  # messages read ahead of the app (32 x 20 ms of audio) before reading pauses


class ReadAheadWebSocketProtocol(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        was_paused = self.read_paused
        self.read_paused = True  # the parent pauses unless it believes it already has
        super().send_receive_event_to_app()
        self.read_paused = was_paused
        if not was_paused and self.queue.qsize() >= MAX_QUEUED:
            self.read_paused = True  # the parent's receive() resumes once the app drains it
            self.transport.pause_reading()
