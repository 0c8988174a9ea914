"""The gateway's WebSocket server protocol: uvicorn's sans-I/O one, without a pause per message,
and with a direct lane for text messages.

uvicorn pauses reading the socket after every message it queues for the app and resumes on the
app's next ``receive``: two ``epoll_ctl`` system calls and their event-loop bookkeeping per
20 ms media frame, about a quarter of the gateway's per-frame CPU (py-spy, bench data_plane).
This protocol lets up to ``MAX_QUEUED`` messages wait for the app before it pauses, so a call
that the app reads promptly never pauses at all, and a stalled one is still bounded.

The direct lane (``DirectText``, in the scope's extensions under ``DIRECT_TEXT``) lets the
stream bridge take a text message in the socket's read callback and write one back without the
ASGI queue, a task wake-up and Starlette's receive and send in between: per relayed media frame
that is most of the Python the gateway runs. Whatever the lane declines, and every message
behind one waiting in the queue, goes the ASGI way as before, so the app sees them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

MAX_QUEUED = 32  # messages read ahead of the app (32 x 20 ms of audio) before reading pauses
DIRECT_TEXT = "rtvoice.direct_text"  # the scope extension holding the connection's DirectText


def text_frame(payload: bytes) -> bytes:
    """One unmasked (server-to-client) WebSocket text frame holding ``payload``."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


class DirectText(Protocol):
    # Takes one whole inbound text message (UTF-8 bytes) in the read callback; False leaves
    # it, and what follows it, to the app's receive().
    text_sink: Callable[[bytes], bool] | None

    def send_text_now(self, payload: bytes) -> bool:
        """Write one text message now; False if the socket is closing or ACS is not reading."""
        ...


def direct_text(scope: Mapping[str, Any]) -> DirectText | None:
    """The connection's direct lane, when the server runs this protocol."""
    return cast(DirectText | None, scope.get("extensions", {}).get(DIRECT_TEXT))


class ReadAheadWebSocketProtocol(WebSocketsSansIOProtocol):
    text_sink: Callable[[bytes], bool] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = cast(dict[str, Any] | None, getattr(self, "scope", None))
        if scope is not None:  # the upgrade was accepted: the app will see this scope
            scope["extensions"][DIRECT_TEXT] = self

    def send_receive_event_to_app(self) -> None:
        if self._hand_on():
            return
        was_paused = self.read_paused
        self.read_paused = True  # the parent pauses unless it believes it already has
        super().send_receive_event_to_app()
        self.read_paused = was_paused
        if not was_paused and self.queue.qsize() >= MAX_QUEUED:
            self.read_paused = True  # the parent's receive() resumes once the app drains it
            self.transport.pause_reading()

    def _hand_on(self) -> bool:
        """The message went down the direct lane."""
        sink = self.text_sink
        if (
            sink is None
            or self.curr_msg_data_type != "text"
            or len(self.frames) != 1
            or not self.queue.empty()  # the app has messages to read first
            or self.close_sent
        ):
            return False
        data = bytes(self.frames[0])
        if not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError:
                return False  # the parent closes the socket with 1007
        if not sink(data):
            return False
        self.frames = []
        return True

    def send_text_now(self, payload: bytes) -> bool:
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(text_frame(payload))
        return True
