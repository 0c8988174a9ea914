"""Shared fixtures: real redis-server and Cosmos emulator processes, started once per session."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.config import CallActorConfig
from simulator.devstack.local_redis import LocalRedisServer
from simulator.llm_api import LlmStandIn
from simulator.service import DEFAULT_EVENT_GRID_PATH, AcsStandIn
from storage.keys import RedisKeyManager
from storage.redis_manager import AsyncAzureRedisManager
from storage.settings import Settings
from tests.helpers import REDIS_OP_TIMEOUT_S
from tests.servers import EMULATOR_KEY, CosmosEmulator


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedisServer]:
    server = LocalRedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedisServer) -> str:
    if not redis_server.running:  # a fault test may have stopped it
        redis_server.start()
    return redis_server.url


@pytest.fixture
def stack_base(redis_url: str, ray_cluster: dict[str, Any]) -> Settings:
    """Settings for a LocalStack on the tests' Ray and Redis, with keys of its own."""
    return Settings(
        ray_namespace=str(ray_cluster["namespace"]),
        redis_url=redis_url,
        environment=f"s{uuid.uuid4().hex[:10]}",
    )


@pytest.fixture
def key_manager() -> RedisKeyManager:
    """A key manager with a unique environment per test, so tests never share keys."""
    return RedisKeyManager(app_prefix="rtvoice", environment=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def redis_mgr(
    redis_url: str, key_manager: RedisKeyManager
) -> AsyncIterator[AsyncAzureRedisManager]:
    """A manager on the session redis-server with this test's keys (closed after the test)."""
    async with AsyncAzureRedisManager.from_url(
        redis_url, key_manager, op_timeout=REDIS_OP_TIMEOUT_S
    ) as manager:
        yield manager


@pytest.fixture(scope="session")
def cosmos_emulator() -> Iterator[CosmosEmulator]:
    emulator = CosmosEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def cosmos_key() -> str:
    return EMULATOR_KEY


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, object]]:
    """One local Ray instance per session with call slots, in a namespace unique to the run."""
    import ray

    from actors.cluster import init_local_ray

    info = init_local_ray(num_call_slots=32, namespace=f"rtvoice-test-{uuid.uuid4().hex[:8]}")
    yield info
    ray.shutdown()


@pytest.fixture
def actor_config(
    redis_url: str, key_manager: RedisKeyManager, tmp_path: Path
) -> Callable[..., CallActorConfig]:
    """Builds a call actor config on the session's Redis, in this test's key environment and
    temporary archive; knobs and settings (by flat name) are changed by keyword."""

    def build(**changes: Any) -> CallActorConfig:
        return CallActorConfig.from_settings(
            Settings(),
            redis_url=redis_url,
            environment=key_manager.environment,
            archive_path=str(tmp_path / "archive.sqlite3"),
            spool_dir=str(tmp_path / "spool"),
            **changes,
        )

    return build


@pytest.fixture
async def llm() -> AsyncIterator[LlmStandIn]:
    """The model API stand-in on a free port, fast pacing (tests assert no durations)."""
    async with LlmStandIn(ttft_s=0.01, token_s=0.001, api_key="test-key") as standin:
        yield standin


@pytest.fixture
async def acs() -> AsyncIterator[tuple[AcsStandIn, str]]:
    """A running ACS stand-in whose Event Grid subscription carries a secret, and the secret
    (the gateway's RTVOICE_EVENTGRID_SECRET)."""
    secret = secrets.token_urlsafe(24)
    stand_in = await AcsStandIn(event_grid_path=f"{DEFAULT_EVENT_GRID_PATH}?code={secret}").start()
    yield stand_in, secret
    await stand_in.stop()
