"""Gateway metrics in Prometheus form: request outcomes, refused input by reason, frames routed.

Labels are routes, streams and reason codes, never call ids (unbounded cardinality).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class GatewayMetrics:
    def __init__(self, replica_id: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rtvoice_gateway_requests",
            "HTTP requests by route and status",
            ["route", "status"],
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
            "Messages dropped from a full replay buffer while an actor reconnects",
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
        self.replica = Gauge(
            "rtvoice_gateway_info", "Replica identity", ["replica"], registry=self.registry
        )
        self.replica.labels(replica=replica_id).set(1)

    def refuse(self, input_kind: str, reason: str) -> None:
        self.refused.labels(input=input_kind, reason=reason).inc()

    def refused_count(self, input_kind: str, reason: str) -> float:
        return self.refused.labels(input=input_kind, reason=reason)._value.get()

    def frames_routed(self, stream: str, direction: str) -> float:
        return self.frames.labels(stream=stream, direction=direction)._value.get()

    def render(self) -> bytes:
        return generate_latest(self.registry)
