"""Gateway metrics in Prometheus form: request outcomes and handling time, refused input by
reason, calls answered, rejected and dropped, frames routed, callback event delivery time.

Labels are route templates, streams and reason codes, never call ids or raw paths (unbounded
cardinality).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette import status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.latency import LatencyRecorder, percentile

UNMATCHED_ROUTE = "unmatched"


class StorageLatency(Collector):
    """The Redis manager's per-operation latency (its LatencyRecorder), read at scrape time."""

    def __init__(self, recorder: LatencyRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[GaugeMetricFamily]:
        latency = GaugeMetricFamily(
            "rtvoice_gateway_redis_op_ms",
            "Redis operation latency over the last samples, by operation and quantile",
            labels=["op", "quantile"],
        )
        errors = GaugeMetricFamily(
            "rtvoice_gateway_redis_op_errors", "Redis operations failed", labels=["op"]
        )
        for op, stats in self._recorder.stats().items():
            latency.add_metric([op, "0.5"], stats.p50_ms)
            latency.add_metric([op, "0.99"], stats.p99_ms)
            errors.add_metric([op], stats.errors)
        yield latency
        yield errors


class PoolView(Protocol):
    """What the metrics read of the warm pool (actors/pool.py)."""

    @property
    def spares_seen(self) -> int: ...

    @property
    def cold_starts(self) -> int: ...

    @property
    def stream_binds(self) -> int: ...

    @property
    def ray_binds(self) -> int: ...

    @property
    def bind_seconds(self) -> Collection[float]: ...


class PoolStats(Collector):
    """The warm pool as this replica sees it, read at scrape time."""

    def __init__(self, pool: PoolView) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "rtvoice_gateway_pool_spares",
            "Spare call actors queued in the warm pool",
            value=self._pool.spares_seen,
        )
        yield GaugeMetricFamily(
            "rtvoice_gateway_pool_cold_starts",
            "Calls this replica started without a spare (pool empty or Redis down)",
            value=self._pool.cold_starts,
        )
        binds = GaugeMetricFamily(
            "rtvoice_gateway_pool_binds",
            "Calls bound to their actor by this replica, by path: over a spare's stream endpoint,"
            " or through Ray (a cold actor, a restarted one, a spare whose endpoint failed)",
            labels=["path"],
        )
        binds.add_metric(["stream"], self._pool.stream_binds)
        binds.add_metric(["ray"], self._pool.ray_binds)
        yield binds
        bind = GaugeMetricFamily(
            "rtvoice_gateway_pool_bind_ms",
            "Spare taken to the call's stream endpoint up, recent binds, by quantile",
            labels=["quantile"],
        )
        samples = sorted(s * 1000.0 for s in self._pool.bind_seconds)
        for q in (50, 99):
            bind.add_metric([str(q / 100)], percentile(samples, q))
        yield bind


class GatewayMetrics:
    def __init__(self, replica_id: str, storage_latency: LatencyRecorder | None = None) -> None:
        self.registry = CollectorRegistry()
        if storage_latency is not None:
            self.registry.register(StorageLatency(storage_latency))
        self.requests = Counter(
            "rtvoice_gateway_requests",
            "HTTP requests by route and status; WebSockets by route and close code",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "rtvoice_gateway_request_seconds",
            "HTTP request handling time by route (ACS callbacks, Event Grid, probes)",
            ["route"],
            registry=self.registry,
        )
        self.event_delivery_seconds = Histogram(
            "rtvoice_gateway_event_delivery_seconds",
            "Time to hand one callback event to its call actor, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.refused = Counter(
            "rtvoice_gateway_refused",
            "Refused input by kind of input and reason code",
            ["input", "reason"],
            registry=self.registry,
        )
        self.frames = Counter(
            "rtvoice_gateway_frames",
            "WebSocket messages routed between ACS and call actors",
            ["stream", "direction"],
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "rtvoice_gateway_frames_dropped",
            "Messages dropped: a full replay buffer while an actor reconnects, or media an "
            "actor that stopped reading left queued past the backlog limit",
            ["stream"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "rtvoice_gateway_actor_reconnects",
            "Stream reconnections to a restarted call actor",
            ["stream"],
            registry=self.registry,
        )
        self.duplicate_events = Counter(
            "rtvoice_gateway_duplicate_events",
            "Callback events dropped as duplicates by event id",
            registry=self.registry,
        )
        self.open_sockets = Gauge(
            "rtvoice_gateway_open_sockets",
            "ACS WebSockets currently open on this replica",
            ["stream"],
            registry=self.registry,
        )
        self.calls_answered = Counter(
            "rtvoice_gateway_calls_answered", "Incoming calls answered", registry=self.registry
        )
        self.calls_rejected = Counter(
            "rtvoice_gateway_calls_rejected",
            "Incoming calls rejected (busy) without answering, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.calls_dropped = Counter(
            "rtvoice_gateway_calls_dropped",
            "Answered calls hung up because their actor could not be reached, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.call_setup_seconds = Histogram(
            "rtvoice_gateway_call_setup_seconds",
            "IncomingCall received -> the answered call's actor ready for media",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        # (call id, seconds) of the latest set-ups, for the call_setup benchmark's percentiles.
        self.recent_setups: deque[tuple[str, float]] = deque(maxlen=1000)
        self.replica = Gauge(
            "rtvoice_gateway_info", "Replica identity", ["replica"], registry=self.registry
        )
        self.replica.labels(replica=replica_id).set(1)

    def call_set_up(self, call_id: str, seconds: float) -> None:
        self.call_setup_seconds.observe(seconds)
        self.recent_setups.append((call_id, seconds))

    def watch_pool(self, pool: PoolView) -> None:
        self.registry.register(PoolStats(pool))

    def refuse(self, input_kind: str, reason: str) -> None:
        self.refused.labels(input=input_kind, reason=reason).inc()

    def refused_count(self, input_kind: str, reason: str) -> float:
        return self.refused.labels(input=input_kind, reason=reason)._value.get()

    def frames_routed(self, stream: str, direction: str) -> float:
        return self.frames.labels(stream=stream, direction=direction)._value.get()

    def request_count(self, route: str, status: int) -> float:
        return self.requests.labels(route=route, status=str(status))._value.get()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route(scope: Scope) -> str:
    """The matched route's path template (the router records it in the scope), never the raw
    path: an unknown path must not create a series."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestMetrics:
    """Pure ASGI middleware: every HTTP request counted by route and status and timed by route;
    every WebSocket counted by route and close code (the one the gateway sent; else the
    caller's; 1006 if neither side closed it)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        code = status.HTTP_500_INTERNAL_SERVER_ERROR  # if the app fails before responding

        async def send_and_note(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _route(scope)
            self.metrics.request_seconds.labels(route=route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route=route, status=str(code)).inc()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent: int | None = None
        received: int | None = None

        async def receive_and_note() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "websocket.disconnect" and received is None:
                received = message.get("code", status.WS_1005_NO_STATUS_RCVD)
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal sent
            if sent is None:
                sent = _close_code(message)
            await send(message)

        try:
            await self.app(scope, receive_and_note, send_and_note)
        except Exception:
            if sent is None:
                sent = status.WS_1011_INTERNAL_ERROR  # the server closes it so
            raise
        finally:
            code = sent if sent is not None else received
            if code is None:
                code = status.WS_1006_ABNORMAL_CLOSURE
            self.metrics.requests.labels(route=_route(scope), status=str(code)).inc()


def _close_code(message: Message) -> int | None:
    """The code of a close (or of an HTTP refusal of the handshake) the app sends."""
    if message["type"] == "websocket.close":
        code: int = message.get("code", status.WS_1000_NORMAL_CLOSURE)
        return code
    if message["type"] == "websocket.http.response.start":
        refused: int = message["status"]
        return refused
    return None
