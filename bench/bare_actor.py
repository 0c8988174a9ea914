"""The reference for ``rtvoice bench density``: a trivial async Ray actor that imports nothing
of rtvoice (this module imports only ``os``), placed like a call actor (``num_cpus=0``, one call
slot). Kept in its own module so the worker that runs it imports no more than this.
"""

from __future__ import annotations

import os


class BareActor:
    async def pid(self) -> int:
        return os.getpid()
