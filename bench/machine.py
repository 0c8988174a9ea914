"""The machine a benchmark ran on (cores, memory, CPU, Python, Ray), recorded with its results.

Reads only local system facts; no host name or user name.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def describe_machine() -> dict[str, Any]:
    import ray  # the version of the Ray actually imported

    return {
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu": _cpu_model(),
        "memory_gib": _meminfo_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One line for the console and RESULTS.md."""
    return (
        f"{machine.get('cores')} cores ({machine.get('cpu')}), {machine.get('memory_gib')} GiB, "
        f"Python {machine.get('python')}, Ray {machine.get('ray')}, {machine.get('os')}"
    )
