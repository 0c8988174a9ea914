"""gateway/deploy/prometheus-rules.yaml: every rule's expression names a metric the code
exports, every rule states its target, and ``promtool check rules`` passes when promtool is
installed (Debian's ``prometheus`` package)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import RayMetricsExporter
from gateway.metrics import GatewayMetrics
from gateway.storage_health import StorageHealth
from storage.latency import LatencyRecorder
from storage.redis_health import RedisHealth

RULES = Path(__file__).resolve().parent.parent / "gateway" / "deploy" / "prometheus-rules.yaml"
METRIC = re.compile(r"\b((?:ray_)?rtvoice_[a-zA-Z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Pool:
    spares_seen = 1
    cold_starts = 0
    stream_binds = 1
    ray_binds = 0
    bind_seconds = (0.1,)


def gateway_metric_names() -> set[str]:
    """Every sample name a replica's /metrics shows once each collector has something."""
    latency = LatencyRecorder()
    latency.record("checkpoint", 0.001)
    metrics = GatewayMetrics("gw-1", latency)
    metrics.watch_pool(Pool())
    health = StorageHealth(None, "gw-1")  # type: ignore[arg-type]  # never refreshed here
    health.health = RedisHealth(700, 1000, 3, 64)
    health.ttl_headroom_s = 1700.0
    metrics.registry.register(health)
    metrics.calls_rejected.labels(reason="capacity").inc()
    metrics.calls_dropped.labels(reason="activation_timeout").inc()
    families = text_string_to_metric_families(metrics.render().decode())
    return {sample.name for family in families for sample in family.samples}


def actor_metric_names() -> set[str]:
    """The call actors' series as Ray's metrics agent exports them (prefix ``ray_``)."""
    exporter = RayMetricsExporter("node-1")
    found: list[Any] = []
    for value in vars(exporter).values():
        found.extend(value.values() if isinstance(value, dict) else [value])
    names = {m.info["name"] for m in found if hasattr(m, "info")}
    return {f"ray_{name}{suffix}" for name in names for suffix in ("", *HISTOGRAM_SUFFIXES)}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_expression_names_metrics_the_code_exports() -> None:
    exported = gateway_metric_names() | actor_metric_names()
    for rule in rules():
        named = set(METRIC.findall(rule["expr"]))
        assert named, rule["alert"]
        assert named <= exported, (rule["alert"], named - exported)


def test_every_baseline_has_a_rule_with_its_target() -> None:
    by_metric = {m: r for r in rules() for m in METRIC.findall(r["expr"])}
    for metric in (
        "rtvoice_gateway_redis_op_ms",
        "ray_rtvoice_call_checkpoint_ms_bucket",
        "rtvoice_gateway_redis_memory_used_ratio",
        "rtvoice_gateway_redis_pool_utilisation_ratio",
        "rtvoice_gateway_call_context_ttl_headroom_seconds",
    ):
        rule = by_metric[metric]
        assert rule["annotations"]["target"] and rule["labels"]["severity"], metric


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
