"""``rtvoice bench``'s arguments: registered with the ``rtvoice`` command through the
``rtvoice.commands`` entry-point group (pyproject.toml), so the gateway never imports it.

Argument parsing only (kept light: every ``rtvoice`` command builds this parser); the runs are
``bench.runner`` and each benchmark's module.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import uvloop

from bench.registry import ALL, BENCHMARKS, selected
from bench.results import BenchOptions
from gateway.cli import bounded_int
from storage.settings import Settings


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``rtvoice`` sub-parsers; ``func(args, settings)`` runs it."""
    listing = "; ".join(f"{name}: {text}" for name, text in BENCHMARKS.items())
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="run a benchmark on this machine (local Ray, Redis, gateway, ACS stand-in)",
        description=f"Benchmarks: {listing}. `all` runs every one.",
    )
    bench.add_argument("name", choices=[*BENCHMARKS, ALL], help="a benchmark, or all")
    bench.add_argument(
        "--calls", type=bounded_int(1, 1000), default=None, help="size (default: each one's own)"
    )
    bench.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the results here (a directory with `all`); default bench/results/",
    )
    bench.set_defaults(func=run_bench_command)
    return bench


def run_bench_command(args: argparse.Namespace, settings: Settings) -> int:
    from bench.runner import run_benchmarks  # Ray and the servers: on use only

    return uvloop.run(  # the loop `rtvoice serve` runs the gateway on
        run_benchmarks(
            selected(args.name), settings, BenchOptions(calls=args.calls), json_to=args.json
        )
    )
