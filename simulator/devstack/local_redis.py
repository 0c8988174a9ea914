"""A private ``redis-server`` process on a free loopback port, for local runs and tests.

Never used in production, where ``RTVOICE_REDIS_URL`` or Azure Cache for Redis is configured.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(
    proc: subprocess.Popen[bytes], probe: Callable[[], bool], timeout: float, name: str
) -> None:
    """Poll ``probe`` until it returns True; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, and kill if it has not exited within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class LocalRedisServer:
    """Starts, stops and restarts one ``redis-server`` on the same port (data kept in memory)."""

    def __init__(self, port: int | None = None, executable: str = "redis-server") -> None:
        path = shutil.which(executable)
        if path is None:
            raise RuntimeError(
                f"{executable} not found: install it (Debian: apt-get install redis-server) "
                "or set RTVOICE_REDIS_URL"
            )
        self.executable = path
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="rtvoice-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> LocalRedisServer:
        if self.running:
            return self
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--protected-mode", "yes",
        ]  # fmt: skip
        log = open(Path(self._dir) / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until_serving(self._proc, self._pong, timeout, f"redis-server on {self.port}")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
