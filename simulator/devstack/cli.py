"""``rtvoice demo``'s arguments: registered with the ``rtvoice`` command through the
``rtvoice.commands`` entry-point group (pyproject.toml), so the gateway never imports it.

Argument parsing only; the run is ``simulator.devstack.demo``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvloop

from gateway.cli import bounded_int
from storage.settings import Settings


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``rtvoice`` sub-parsers; ``func(args, settings)`` runs it."""
    demo: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="everything local: Ray, Redis, gateway, ACS stand-in"
    )
    demo.add_argument("--calls", type=bounded_int(1, 64), default=3)
    demo.add_argument("--lines", type=bounded_int(1, 20), default=3, help="caller lines per call")
    demo.add_argument("--port", type=bounded_int(0, 65535), default=0, help="0: a free port")
    demo.add_argument(
        "--archive", default=None, help="SQLite archive path (default: RTVOICE_ARCHIVE_PATH)"
    )
    demo.add_argument("--no-dashboard", action="store_true")
    demo.add_argument(
        "--responder",
        default=None,
        help="echo, openai (the model stand-in unless a model is configured) or module:attr "
        "(default: RTVOICE_RESPONDER)",
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="after the table, wait for Ctrl-C"
    )
    demo.set_defaults(func=run_demo_command)
    return demo


def run_demo_command(args: argparse.Namespace, settings: Settings) -> int:
    from simulator.devstack.demo import DemoOptions, run_demo  # Ray and the servers: on use only

    options = DemoOptions(
        calls=args.calls,
        lines=args.lines,
        port=args.port,
        dashboard=not args.no_dashboard,
        archive_path=args.archive,
        keep_running=args.keep_running,
        responder=args.responder,
    )
    return uvloop.run(run_demo(settings, options))  # the loop `rtvoice serve` uses
