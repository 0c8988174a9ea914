"""Runs benchmarks by name: each one's progress, then its table, then its JSON file.

Output and files only; what is measured belongs to each benchmark's module.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from bench.machine import machine_line
from bench.registry import load
from bench.results import RESULTS_DIR, BenchOptions, BenchResult
from storage.settings import Settings


def json_path(result: BenchResult, requested: Path | None, many: bool) -> Path:
    """Where ``result`` goes: ``requested`` (a directory when several run), else bench/results/."""
    if requested is None:
        return result.default_path(RESULTS_DIR)
    return result.default_path(requested) if many else requested


def report(result: BenchResult) -> str:
    """The table, the machine and what each measure means."""
    lines = [
        f"{result.name}: {result.command}",
        f"machine: {machine_line(result.machine)}",
        "",
        result.table,
        "",
    ]
    for name, text in result.definitions.items():
        lines.extend(
            textwrap.wrap(
                f"{name}: {text}", width=100, initial_indent="  ", subsequent_indent="      "
            )
        )
    return "\n".join(lines)


async def run_benchmarks(
    names: Sequence[str],
    settings: Settings,
    options: BenchOptions,
    *,
    json_to: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run each benchmark, print its report, write its JSON; 0 when every one measured all."""
    ok = True
    for name in names:
        result = await load(name).run(settings, options, out)
        path = result.write(json_path(result, json_to, many=len(names) > 1))
        out.write(f"\n{report(result)}\n\n  results: {path}\n")
        if not result.ok:
            out.write(f"  {name}: not every run was measured (see the table)\n")
        out.flush()
        ok = ok and result.ok
    return 0 if ok else 1
