"""Benchmarks of rtvoice on one machine: ``rtvoice bench <name>``, or ``rtvoice bench all``.

Each benchmark is a module of this package named in ``bench.registry`` and exposing a
``BENCHMARK`` (``bench.results.Benchmark``); it starts what it measures (the local stack) and
returns a ``BenchResult`` that the runner prints and writes as JSON. Production packages never
import this one.
"""
