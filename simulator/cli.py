"""``rtvoice simulate``: run callers from the ACS stand-in against a gateway and print a summary.

Owns argument parsing, the progress bar and the summary table; the calls belong to ``scenario``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import uvloop

from simulator.audio import AudioFormat, write_wav
from simulator.jwt_issuer import ACS_ISSUER
from simulator.report import CallReport
from simulator.scenario import Scenario, ScenarioReport, run_scenario
from simulator.script import CallerScript
from simulator.service import DEFAULT_EVENT_GRID_PATH, AcsStandIn
from storage.settings import Settings

PROGRESS_MIN_S = 5.0  # runs expected to be shorter than this get no progress bar
PROGRESS_WIDTH = 30
TABLE_ROWS = 20


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to an ``argparse`` sub-parser set; sets ``func=run_simulate``.

    ``rtvoice simulate`` loads it through the ``rtvoice.commands`` entry-point group.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="place simulated ACS calls against a gateway",
        description="Run the local ACS stand-in and place simulated calls against a gateway.",
    )
    parser.add_argument(
        "--gateway", required=True, help="gateway base URL, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument("--calls", type=int, default=None, help="number of calls (default 1)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each caller talks")
    parser.add_argument("--scenario", type=Path, default=None, help="scenario JSON file")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between arrivals")
    parser.add_argument("--hangup", choices=["caller", "app"], default="caller")
    parser.add_argument("--fast", action="store_true", help="send frames as fast as possible")
    parser.add_argument("--port", type=int, default=0, help="stand-in port (0: any free port)")
    parser.add_argument("--access-key", default=None, help="base64 access key the gateway uses")
    parser.add_argument("--audience", default=None, help="JWT audience (ACS resource id)")
    parser.add_argument("--issuer", default=ACS_ISSUER, help="JWT issuer")
    parser.add_argument("--event-grid-path", default=DEFAULT_EVENT_GRID_PATH)
    parser.add_argument(
        "--event-grid-secret",
        default=None,
        help="the webhook's shared secret (the gateway's RTVOICE_EVENTGRID_SECRET), sent as ?code=",
    )
    parser.add_argument("--answer-timeout", type=float, default=10.0)
    parser.add_argument(
        "--warm-up",
        type=float,
        default=0.0,
        help="seconds the stand-in is up (serving its token keys) before the first call rings",
    )
    parser.add_argument(
        "--json", dest="json_out", default=None, help="write the report (- = stdout)"
    )
    parser.add_argument("--save-audio", type=Path, default=None, help="write heard audio WAVs here")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_simulate)
    return parser


def webhook_path(path: str, secret: str | None) -> str:
    """The webhook path with Event Grid's shared secret in its query, as a subscription has it."""
    if not secret:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urlencode({'code': secret})}"


def build_scenario(args: argparse.Namespace) -> Scenario:
    if args.scenario is not None:
        scenario = Scenario.from_file(args.scenario)
        return scenario if args.calls is None else scenario.model_copy(update={"calls": args.calls})
    caller = CallerScript.talking_for(
        args.duration,
        hangs_up=args.hangup,
        realtime=not args.fast,
        record_audio=args.save_audio is not None,
    )
    return Scenario(calls=args.calls or 1, callers=[caller], stagger_s=args.stagger)


def render_progress(done: int, total: int, elapsed_s: float, width: int = PROGRESS_WIDTH) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} calls  {elapsed_s:6.1f}s"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(report: ScenarioReport) -> str:
    """Per-call rows (the first ``TABLE_ROWS``), totals, then every unexpected observation."""
    header = ["#", "caller", "answered", "connect_s", "frames", "heard_s", "events", "unexpected"]
    rows = [
        [
            r.index,
            r.caller,
            r.answered,
            r.time_to_connected_s,
            r.frames_sent,
            r.heard_s,
            len(r.events),
            len(r.unexpected),
        ]
        for r in report.calls[:TABLE_ROWS]
    ]
    cells = [header, *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(report.calls) > TABLE_ROWS:
        lines.append(f"... {len(report.calls) - TABLE_ROWS} more calls")
    summary = report.summary()
    lines.append("")
    lines.append("  ".join(f"{key}={_cell(value)}" for key, value in summary.items()))
    for r in report.calls:
        lines.extend(f"call {r.index}: {item}" for item in r.unexpected)
    return "\n".join(lines)


class _Progress:
    """A one-line progress bar redrawn on stderr while calls run."""

    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.out = out
        self.enabled = enabled
        self.started = time.monotonic()

    def call_done(self, _: CallReport) -> None:
        self.done += 1
        self.draw()

    def draw(self) -> None:
        if self.enabled:
            bar = render_progress(self.done, self.total, time.monotonic() - self.started)
            self.out.write("\r" + bar)
            self.out.flush()

    async def tick(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.5)

    def finish(self) -> None:
        if self.enabled:
            self.out.write("\n")


async def simulate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    scenario = build_scenario(args)
    expected_s = max(c.expected_duration_s() for c in scenario.callers)
    long_run = expected_s + scenario.calls * scenario.stagger_s >= PROGRESS_MIN_S
    show = long_run and not args.no_progress and err.isatty()
    progress = _Progress(scenario.calls, err, enabled=show)
    acs = AcsStandIn(
        access_key=args.access_key,
        audience=args.audience,
        issuer=args.issuer,
        port=args.port,
        event_grid_path=webhook_path(args.event_grid_path, args.event_grid_secret),
        answer_timeout_s=args.answer_timeout,
    )
    async with acs:
        err.write(
            f"ACS stand-in: endpoint={acs.endpoint} issuer={acs.issuer} "
            f"jwks={acs.jwks_url} audience={acs.audience}\n"
        )
        await asyncio.sleep(max(0.0, args.warm_up))
        ticker = asyncio.create_task(progress.tick()) if progress.enabled else None
        try:
            report = await run_scenario(acs, args.gateway, scenario, progress.call_done)
        finally:
            if ticker is not None:
                ticker.cancel()
            progress.finish()
    out.write(format_table(report) + "\n")
    if args.save_audio is not None:
        save_heard_audio(report, args.save_audio)
    if args.json_out:
        document = json.dumps(
            {"summary": report.summary(), "calls": [r.summary() for r in report.calls]}, indent=2
        )
        if args.json_out == "-":
            out.write(document + "\n")
        else:
            Path(args.json_out).write_text(document + "\n")
    return 0 if report.ok else 1


def save_heard_audio(report: ScenarioReport, directory: Path) -> None:
    """One WAV per call of what the caller heard (the app's voice), for listening to a run."""
    directory.mkdir(parents=True, exist_ok=True)
    for call in report.calls:
        if call.heard_pcm:
            fmt = AudioFormat.from_acs(call.audio_format)
            write_wav(directory / f"call-{call.index:03d}-heard.wav", call.heard_pcm, fmt)


def run_simulate(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run ``simulate``; ``settings`` (passed by ``rtvoice``) go unused: the stand-in is
    configured by flags, not RTVOICE_*."""
    # uvloop, as `rtvoice demo` runs the stand-in: the load generator's own CPU per frame is
    # lower, which leaves the benchmarks' shared cores to what they measure.
    return uvloop.run(simulate(args, sys.stdout, sys.stderr))


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.cli simulate …`` (the same command ``rtvoice simulate`` runs)."""
    parser = argparse.ArgumentParser(prog="simulator")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
