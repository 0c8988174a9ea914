"""Live per-call counters, and their export through ``ray.util.metrics``.

Exported series are tagged by node and call state only, never by call id (unbounded cardinality).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.latency import LatencyRecorder

FRAME_LATENCY_WINDOW = 3000  # the last minute of 20 ms frames
# A capture timestamp ahead of us, or older than this, is a forged or broken clock, not latency.
MAX_FRAME_LATENCY_S = 300.0


def frame_latency_s(timestamp: str, received_at: float) -> float | None:
    """Seconds from an AudioData frame's capture timestamp (ISO 8601, ms) to ``received_at``.

    None for a missing or unparsable timestamp; ACS's clock is not ours, so this is only
    meaningful when both ends share a clock (the local stand-in) or are NTP-synchronised.
    """
    try:
        return received_at - datetime.fromisoformat(timestamp).timestamp()
    except (ValueError, OverflowError):
        return None


@dataclass
class LiveMetrics:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0  # lost: inbound with no ring (participant bound), outbound unsent
    # The ring keeps the last N seconds by design: wrap-around is not loss.
    ring_overwritten_frames: int = 0
    frames_late: int = 0
    bad_timestamps: int = 0  # frames whose capture time is outside the sane latency window
    transcripts_truncated: int = 0  # cut to MAX_TRANSCRIPT_CHARS
    invalid_messages: Counter[str] = field(default_factory=Counter)  # by reason code
    protocol_errors: Counter[str] = field(default_factory=Counter)  # connection-level refusals
    connections: int = 0
    turns: int = 0
    barge_ins: int = 0
    events: int = 0
    duplicate_events: int = 0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    storage_failures: Counter[str] = field(default_factory=Counter)  # by step (session, ...)
    checkpoint_ms_last: float = 0.0
    checkpoint_ms_max: float = 0.0
    checkpoint_ms_total: float = 0.0
    tts_hits: int = 0
    tts_misses: int = 0
    frame_latency: LatencyRecorder = field(
        default_factory=lambda: LatencyRecorder(FRAME_LATENCY_WINDOW)
    )
    # Frames captured before this actor's endpoint was up (call set-up or a restart) waited
    # for the actor, not for the data plane: counted apart so they do not hide its latency.
    backlog_frames: int = 0
    backlog_wait_ms_max: float = 0.0
    # Replies (actors/replies.py): time to the model's first token, the caller's final
    # transcript to the reply's first audio, and what the model cost.
    replies: int = 0
    replies_cut: int = 0  # the caller spoke over the reply (barge-in) or hung up during it
    reply_failures: Counter[str] = field(default_factory=Counter)  # fallback spoken, by reason
    reply_latency: LatencyRecorder = field(default_factory=lambda: LatencyRecorder(256))
    tokens_in: int = 0
    tokens_out: int = 0
    # Reply timings not yet pushed to Ray's histograms (bounded: a flush every few seconds).
    unexported_reply_ms: deque[tuple[str, float]] = field(
        default_factory=lambda: deque(maxlen=256)
    )

    def frame_seen(self, latency_s: float, *, captured_before_ready: bool) -> None:
        if not 0.0 <= latency_s <= MAX_FRAME_LATENCY_S:
            self.bad_timestamps += 1
            return
        if captured_before_ready:
            self.backlog_frames += 1
            self.backlog_wait_ms_max = max(self.backlog_wait_ms_max, latency_s * 1000.0)
        else:
            self.frame_latency.record("frame", latency_s)

    def reply_timed(self, name: str, seconds: float) -> None:
        """``ttft`` or ``first_audio`` of one reply."""
        self.reply_latency.record(name, seconds)
        self.unexported_reply_ms.append((name, seconds * 1000.0))

    def checkpoint_done(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.checkpoints += 1
        self.checkpoint_ms_last = ms
        self.checkpoint_ms_total += ms
        self.checkpoint_ms_max = max(self.checkpoint_ms_max, ms)

    def snapshot(self) -> dict[str, Any]:
        mean = self.checkpoint_ms_total / self.checkpoints if self.checkpoints else 0.0
        latency = self.frame_latency.stats().get("frame")
        replies = self.reply_latency.stats()
        ttft, first_audio = replies.get("ttft"), replies.get("first_audio")
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "ring_overwritten_frames": self.ring_overwritten_frames,
            "frames_late": self.frames_late,
            "bad_timestamps": self.bad_timestamps,
            "transcripts_truncated": self.transcripts_truncated,
            "invalid_messages": dict(self.invalid_messages),
            "protocol_errors": dict(self.protocol_errors),
            "connections": self.connections,
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "events": self.events,
            "duplicate_events": self.duplicate_events,
            "checkpoints": self.checkpoints,
            "checkpoint_failures": self.checkpoint_failures,
            "storage_failures": dict(self.storage_failures),
            "checkpoint_ms_last": round(self.checkpoint_ms_last, 3),
            "checkpoint_ms_max": round(self.checkpoint_ms_max, 3),
            "checkpoint_ms_mean": round(mean, 3),
            "tts_hits": self.tts_hits,
            "tts_misses": self.tts_misses,
            "frame_latency_ms_p50": round(latency.p50_ms, 3) if latency else None,
            "frame_latency_ms_p99": round(latency.p99_ms, 3) if latency else None,
            "backlog_frames": self.backlog_frames,
            "backlog_wait_ms_max": round(self.backlog_wait_ms_max, 3),
            "replies": self.replies,
            "replies_cut": self.replies_cut,
            "reply_failures": dict(self.reply_failures),
            "reply_ttft_ms_p50": round(ttft.p50_ms, 3) if ttft else None,
            "reply_ttft_ms_p99": round(ttft.p99_ms, 3) if ttft else None,
            "reply_first_audio_ms_p50": round(first_audio.p50_ms, 3) if first_audio else None,
            "reply_first_audio_ms_p99": round(first_audio.p99_ms, 3) if first_audio else None,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }


_COUNTERS = (
    "frames_in",
    "frames_out",
    "frames_dropped",
    "frames_late",
    "turns",
    "barge_ins",
    "replies",
    "replies_cut",
    "tokens_in",
    "tokens_out",
)


class RayMetricsExporter:
    """Pushes LiveMetrics deltas to Ray's metrics agent; call ``flush`` periodically."""

    def __init__(self, node_id: str) -> None:
        from ray.util import metrics  # imported here: only inside a Ray worker

        self._node = node_id
        tags = ("node", "state")
        self._counters = {
            name: metrics.Counter(f"rtvoice_call_{name}_total", "call actor " + name, tags)
            for name in (*_COUNTERS, "invalid_messages", "checkpoint_failures", "reply_failures")
        }
        self._reply_ms = {
            name: metrics.Histogram(
                f"rtvoice_call_reply_{name}_ms",
                text,
                boundaries=[10, 25, 50, 100, 200, 300, 500, 1000, 2000, 5000],
                tag_keys=tags,
            )
            for name, text in (
                ("ttft", "the model's time to first token in milliseconds"),
                ("first_audio", "final transcript to the reply's first audio in milliseconds"),
            )
        }
        self._checkpoint = metrics.Histogram(
            "rtvoice_call_checkpoint_ms",
            "checkpoint round trip in milliseconds",
            boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 1000],
            tag_keys=tags,
        )
        self._last: dict[str, float] = {}
        self._last_checkpoints = 0

    def flush(self, live: LiveMetrics, state: str) -> None:
        tags = {"node": self._node, "state": state}
        current = {name: float(getattr(live, name)) for name in _COUNTERS}
        current["invalid_messages"] = float(sum(live.invalid_messages.values()))
        current["checkpoint_failures"] = float(live.checkpoint_failures)
        current["reply_failures"] = float(sum(live.reply_failures.values()))
        for name, value in current.items():
            delta = value - self._last.get(name, 0.0)
            if delta > 0:
                self._counters[name].inc(delta, tags=tags)
        self._last = current
        while live.unexported_reply_ms:
            name, ms = live.unexported_reply_ms.popleft()
            self._reply_ms[name].observe(ms, tags=tags)
        if live.checkpoints > self._last_checkpoints:
            self._checkpoint.observe(live.checkpoint_ms_last, tags=tags)
            self._last_checkpoints = live.checkpoints
