"""Real servers for the tests: the Cosmos protocol emulator (Node), beside the devstack's Redis."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

from simulator.devstack.local_redis import free_port, stop_process, wait_until_serving

EMULATOR_DIR = Path(__file__).parent / "cosmos_emulator"
EMULATOR_BIN = EMULATOR_DIR / "node_modules" / ".bin" / "cosmosdb-server"
# The emulator accepts any key; the SDK only needs valid base64.
EMULATOR_KEY = "dGVzdC1rZXktZm9yLXRoZS1sb2NhbC1jb3Ntb3MtZW11bGF0b3I="


class CosmosEmulator:
    """``@vercel/cosmosdb-server`` over HTTPS with its self-signed certificate; data in memory."""

    def __init__(self, port: int | None = None) -> None:
        if not EMULATOR_BIN.exists():
            raise RuntimeError(
                f"{EMULATOR_BIN} missing: run `npm ci` in tests/cosmos_emulator (make test does)"
            )
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> CosmosEmulator:
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [str(EMULATOR_BIN), "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_serving(self._proc, self._tls_handshake, timeout, "cosmosdb-server")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _tls_handshake(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the emulator's self-signed certificate, tests only
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
            ctx.wrap_socket(raw),
        ):
            return True

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        self._proc = None
