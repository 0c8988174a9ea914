"""What ``/proc`` says about a process: its CPU time and its private memory (USS).

Plain readers; each returns None when the process is gone or unreadable.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def cpu_percent(before: float | None, after: float | None, seconds: float) -> float | None:
    """% of one core between two ``proc_cpu_s`` readings ``seconds`` apart."""
    if before is None or after is None or seconds <= 0:
        return None
    return 100.0 * (after - before) / seconds


def private_kib(pid: int) -> int | None:
    """USS in KiB: the ``Private_*`` lines of ``/proc/<pid>/smaps_rollup``."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("Private_"))


def all_cpu_s() -> dict[int, float]:
    """``proc_cpu_s`` of every process now (pid -> seconds); those gone meanwhile are left out."""
    readings = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (seconds := proc_cpu_s(int(entry.name))) is not None:
            readings[int(entry.name)] = seconds
    return readings


def command_line(pid: int) -> str:
    """The process's title and arguments, space-separated ("" when gone). Ray names a worker's
    process by its actor class (``ray::CallActor``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
