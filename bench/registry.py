"""Which benchmarks exist: one module of ``bench`` per name, imported only when it runs.

Adding one ([8/11]: data_plane, checkpoint, density, archive) is a module ``bench/<name>.py``
with a ``BENCHMARK`` and one line here; ``rtvoice bench all`` then runs it too.
"""

from __future__ import annotations

import importlib

from bench.results import Benchmark

ALL = "all"  # ``rtvoice bench all``: every benchmark below, in this order

# name -> one line for ``rtvoice bench --help``; the module is ``bench.<name>``.
BENCHMARKS: dict[str, str] = {
    "call_setup": (
        "N simultaneous calls: IncomingCall to the call's actor ready, and frames held at "
        "call set-up, with the warm pool and with cold actors"
    ),
    "arrivals": (
        "N calls arriving one per second, a minute each, on this machine's call slots: each "
        "served whole or rejected busy at once, none answered and then dropped"
    ),
    "data_plane": "N calls streaming at real time: gateway and actor CPU, latency, loss, baselines",
    "data_plane_max": (
        "the largest number of calls (stepping up to N) streaming with no loss and frame "
        "latency p99 under 20 ms"
    ),
    "checkpoint": "checkpoint latency with N calls checkpointing at once, against one Redis SET",
    "density": "private memory and idle CPU per live call actor, against a bare Ray actor",
    "archive": "CallDisconnected to transcript readable, embedded SQLite and the Cosmos emulator",
    "reply_latency": (
        "N live calls with the openai responder and a model of fixed speed: final transcript "
        "to the reply's first audio frame, and rtvoice's overhead over the model's time"
    ),
}


def load(name: str) -> Benchmark:
    """The benchmark called ``name`` (KeyError for one that does not exist)."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    benchmark: Benchmark = importlib.import_module(f"bench.{name}").BENCHMARK
    return benchmark


def selected(name: str) -> list[str]:
    """``all`` -> every benchmark there is, in order; else just ``name`` (KeyError if unknown)."""
    if name == ALL:
        return list(BENCHMARKS)
    if name not in BENCHMARKS:
        raise KeyError(name)
    return [name]
