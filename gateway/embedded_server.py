"""A uvicorn server that leaves process signals to its owner (the gateway, the demo, the stand-in).

uvicorn re-raises a captured SIGINT after its own shutdown, which would interrupt the owner's
clean-up (closing clients, stopping Redis); owners stop it by setting ``should_exit``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
