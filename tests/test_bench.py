"""``rtvoice bench``: percentiles, records and tables as data, the warm-up's give-up path, the
command's registration, and a tiny call_setup run on the local stack (no timing asserts)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bench import arrivals, call_setup
from bench.arrivals import Outcomes
from bench.call_setup import (
    COLD,
    READY_ACTIVATION,
    READY_FIRST_FRAME,
    WARM_POOL,
    ActivationClock,
    CallSetup,
    ModeResult,
    run_call_setup,
    wait_for_spares,
)
from bench.machine import describe_machine, machine_line
from bench.registry import ALL, BENCHMARKS, load, selected
from bench.results import BenchOptions, BenchResult, format_table, spread
from bench.runner import json_path, report
from gateway.cli import build_parser
from simulator import CallReport
from storage.settings import Settings


def _report(index: int, connected: float | None = 0.2, frames: int = 100) -> CallReport:
    report = CallReport(index=index, caller="+1", call_connection_id=f"call-{index}")
    report.answered = True
    report.time_to_connected_s = connected
    report.frames_sent = frames
    return report


def _transcript(held: int, wait_ms: float, frames_in: int = 100) -> dict[str, object]:
    return {
        "metrics": {"backlog_frames": held, "backlog_wait_ms_max": wait_ms, "frames_in": frames_in}
    }


def test_spreads_are_nearest_rank_values_of_the_sample() -> None:
    s = spread([5.0, 1.0, 3.0])
    assert s is not None and (s.n, s.p50, s.p99, s.max) == (3, 3.0, 5.0, 5.0)
    assert s.cells(".1f") == "3.0 / 5.0 / 5.0"
    assert spread([]) is None


def test_actor_ready_is_the_activation_else_the_first_frame_estimate() -> None:
    activated = CallSetup.build(_report(0), 0.4, _transcript(12, 300.0))
    assert activated.actor_ready_s == 0.4 and activated.ready_source == READY_ACTIVATION
    assert (activated.held_frames, activated.held_wait_ms) == (12, 300.0)

    estimated = CallSetup.build(_report(1, connected=0.2), None, _transcript(12, 300.0))
    assert estimated.ready_source == READY_FIRST_FRAME
    assert estimated.actor_ready_s == pytest.approx(0.5)  # CallConnected + the longest hold
    nothing_held = CallSetup.build(_report(2, connected=0.2), None, _transcript(0, 0.0))
    assert nothing_held.actor_ready_s == pytest.approx(0.2)

    unknown = CallSetup.build(_report(3), None, None)
    assert unknown.actor_ready_s is None and unknown.ready_source is None
    assert not unknown.archived

    over = CallSetup.build(_report(4, frames=100), 9.0, _transcript(100, 8000.0))
    assert over.held_throughout and not activated.held_throughout


def test_table_shows_each_run_and_a_pool_that_did_not_warm() -> None:
    cold = ModeResult(COLD, calls=2)
    cold.setups = [
        CallSetup.build(_report(0), 1.0, _transcript(50, 900.0)),
        CallSetup.build(_report(1, frames=50), 2.0, _transcript(50, 1900.0, frames_in=50)),
    ]
    warm = ModeResult(WARM_POOL, calls=2, note="pool not warm (0/2 spares after 1 s)", spares=0)
    assert cold.status == "ok" and warm.status == "not_measured"

    text = call_setup.table([cold, warm], calls=2)
    assert "cold actors (no pool)" in text and "warm pool (2 spares)" in text
    assert "pool not warm (0/2 spares after 1 s)" in text
    assert "1.00 / 2.00 / 2.00" in text  # actor ready p50 / p99 / max
    assert "1 of 2 calls were over before their actor was ready" in text

    doc = cold.to_json()
    assert doc["summary"]["held_frames"] == {"n": 2, "p50": 50, "p99": 50, "max": 50}
    assert doc["ready_sources"] == {READY_ACTIVATION: 2}
    assert warm.to_json()["status"] == "not_measured"

    failed = ModeResult(COLD, calls=2, setups=cold.setups[:1])
    assert failed.status == "calls_failed"


async def test_waiting_for_spares_gives_up_at_the_timeout_with_progress() -> None:
    seen: list[int] = []

    async def none() -> int:
        return 0

    have = await wait_for_spares(
        none, 3, 0.3, lambda n, _: seen.append(n), poll_s=0.02, progress_every_s=0.1
    )
    assert have == 0 and seen and set(seen) == {0}

    counts = iter(range(10))

    async def filling() -> int:
        return next(counts)

    assert await wait_for_spares(filling, 3, 5.0, lambda *_: None, poll_s=0.01) == 3


async def test_activation_clock_records_the_first_return_and_restores_the_router() -> None:
    class Router:
        async def activate(self, call_id: str, incoming: object = None) -> str:
            return f"endpoint-{call_id}"

    router = Router()
    clock = ActivationClock()
    with clock.installed(router):
        assert await router.activate("a") == "endpoint-a"
        first = clock.ready_at["a"]
        await router.activate("a")
    assert clock.ready_at == {"a": first}
    assert clock.since("a", first - 1.0) == pytest.approx(1.0)
    assert clock.since("b", 0.0) is None
    assert "activate" not in vars(router)


def test_every_registered_benchmark_loads_and_all_selects_them() -> None:
    assert "call_setup" in BENCHMARKS
    assert selected(ALL) == list(BENCHMARKS)
    assert selected("call_setup") == ["call_setup"]
    for name in BENCHMARKS:
        assert load(name).name == name
    with pytest.raises(KeyError):
        selected("nope")


def test_bench_is_an_rtvoice_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "call_setup", "--calls", "2", "--json", "out.json"])
    assert callable(args.func) and args.calls == 2 and args.json == Path("out.json")
    assert parser.parse_args(["bench", "all"]).name == ALL
    for bad in (["bench", "nope"], ["bench", "call_setup", "--calls", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_results_go_to_a_timestamped_file_or_the_path_given(tmp_path: Path) -> None:
    result = BenchResult(
        name="call_setup",
        command="rtvoice bench call_setup --calls 2",
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        machine=describe_machine(),
        params={"calls": 2},
        definitions={"x": "what x is"},
        table=format_table(["a", "b"], [["1", "2"]]),
    )
    assert json_path(result, None, many=False).name == "call_setup-20250102T030405Z.json"
    assert json_path(result, tmp_path / "r.json", many=False) == tmp_path / "r.json"
    assert json_path(result, tmp_path, many=True).parent == tmp_path
    doc = orjson.loads(result.write(tmp_path / "r.json").read_bytes())
    assert doc["benchmark"] == "call_setup" and doc["params"] == {"calls": 2}
    assert {"cores", "memory_gib", "python", "ray"} <= set(doc["machine"])
    text = report(result)
    assert machine_line(result.machine) in text and "x: what x is" in text


@pytest.mark.slow  # local Ray, real-time calls
async def test_call_setup_cold_smoke_run(ray_cluster: dict[str, object], tmp_path: Path) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await run_call_setup(settings, 2, out, modes=(COLD,))
    assert result.ok, out.getvalue()
    (run,) = result.runs
    assert (run["mode"], run["status"], run["answered"], run["archived"]) == ("cold", "ok", 2, 2)
    assert all(call["held_frames"] is not None for call in run["per_call"])
    assert run["summary"]["actor_ready_s"]["n"] == 2
    assert "placing 2 calls at once" in out.getvalue()
    assert "cold actors (no pool)" in result.table
    written = orjson.loads(result.write(tmp_path / "cold.json").read_bytes())
    assert written["machine"]["ray"] and written["runs"][0]["per_call"]


@pytest.mark.slow  # local Ray, the warm pool, real-time calls
async def test_call_setup_warm_pool_smoke_run(ray_cluster: dict[str, object]) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await run_call_setup(settings, 2, out, modes=(WARM_POOL,), warm_timeout=60.0)
    (run,) = result.runs
    assert run["status"] == "ok", out.getvalue()
    assert run["spares_at_start"] >= 2 and run["answered"] == 2


def test_arrival_outcomes_tell_served_rejected_and_dropped_apart() -> None:
    served = CallReport(0, "+1", "a", answered=True, hung_up_by="caller")
    rejected = CallReport(1, "+2", "b", rejected=True, reject_reason="busy")
    dropped = CallReport(2, "+3", "c", answered=True, hung_up_by="app")
    assert Outcomes.of([served, rejected, dropped]) == Outcomes(1, 1, 1, 0)


@pytest.mark.slow  # local Ray, real-time calls
async def test_arrivals_smoke_run(ray_cluster: dict[str, object]) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await arrivals.run(settings, BenchOptions(calls=2), out)
    assert result.ok, out.getvalue()
    assert result.runs[0]["outcomes"]["served"] == 2
    assert "served whole" in result.table
