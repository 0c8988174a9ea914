"""Activation: Ray options in one place, and one actor per call even when drivers race."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.activation import actor_options, get_call_actor, get_or_activate
from actors.cluster import list_call_actors
from actors.config import CallActorConfig
from storage.keys import RedisKeyManager
from storage.settings import Settings

DRIVER = """
import sys, time, pickle, ray
from actors.activation import get_or_activate
address, namespace, call_id, start_at, config_path = sys.argv[1:6]
config = pickle.load(open(config_path, "rb"))
ray.init(address=address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
time.sleep(max(0.0, float(start_at) - time.time()))
handle = get_or_activate(call_id, config)
endpoint = ray.get(handle.activate.remote(None))
print("RESULT", handle._actor_id.hex(), endpoint.epoch, endpoint.port, flush=True)
"""


def test_actor_options_in_one_place() -> None:
    config = CallActorConfig.from_settings(
        Settings(), redis_url="redis://x", ray_namespace="ns", call_slot_resource="slot"
    )
    opts = actor_options("call-1", config)
    assert opts["name"] == "call-1" and opts["namespace"] == "ns"
    assert opts["lifetime"] == "detached" and opts["get_if_exists"] is True
    assert opts["max_restarts"] > 0 and opts["resources"] == {"slot": 1}


@pytest.mark.slow  # local Ray and two driver processes
def test_two_drivers_racing_get_one_actor(
    ray_cluster: dict[str, Any], redis_url: str, key_manager: RedisKeyManager, tmp_path: Path
) -> None:
    import pickle

    namespace = str(ray_cluster["namespace"])
    config = CallActorConfig.from_settings(
        Settings(),
        redis_url=redis_url,
        environment=key_manager.environment,
        archive_path=str(tmp_path / "archive.sqlite3"),
        spool_dir=str(tmp_path / "spool"),
        ray_namespace=namespace,
    )
    config_path = tmp_path / "config.pickle"
    config_path.write_bytes(pickle.dumps(config))
    call_id = f"race-{uuid.uuid4().hex[:10]}"
    start_at = time.time() + 6.0  # both drivers connect first, then activate at the same moment
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                str(ray_cluster["address"]),
                namespace,
                call_id,
                str(start_at),
                str(config_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            lines = [line for line in out.splitlines() if line.startswith("RESULT")]
            assert proc.returncode == 0 and lines, err[-2000:]
            results.append(lines[0].split()[1:])
        # Same actor, same incarnation (epoch), same endpoint for both drivers.
        assert results[0] == results[1]
        names = [row["call_id"] for row in list_call_actors(namespace, with_info=False)]
        assert names.count(call_id) == 1
        # A third activation from this driver finds the same actor, still at the same epoch.
        handle = get_or_activate(call_id, config)
        assert handle._actor_id.hex() == results[0][0]
        assert ray.get(handle.activate.remote(None)).epoch == int(results[0][1])
    finally:
        for proc in procs:
            proc.kill()
        handle = get_call_actor(call_id, namespace)
        if handle is not None:
            ray.kill(handle, no_restart=True)
