"""``rtvoice bench``: percentiles, records and tables as data, the warm-up's give-up path, the
command's registration, and a tiny call_setup run on the local stack (no timing asserts)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bench import arrivals, call_setup, data_plane, data_plane_max
from bench.arrivals import Outcomes
from bench.call_setup import (
    COLD,
    READY_ACTIVATION,
    READY_FIRST_FRAME,
    WARM_POOL,
    CallSetup,
    ModeResult,
    run_call_setup,
    wait_for_spares,
)
from bench.cpu_groups import CALL_ACTORS, GATEWAY, OTHER, STAND_IN, GroupCpu
from bench.frame_floor import measure_floor
from bench.gateway_stack import ExternalAcs, load_generator_command
from bench.machine import describe_machine, machine_line
from bench.proc_stats import cpu_percent
from bench.registry import ALL, BENCHMARKS, load, selected
from bench.results import BenchOptions, BenchResult, format_table, spread
from bench.runner import json_path, report
from gateway.cli import build_parser
from simulator import CallReport
from simulator.cli import main as simulator_main
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


def test_a_bursts_cpu_is_split_by_process_group_per_call() -> None:
    commands = {
        1: "rtvoice bench call_setup",
        2: "ray::CallActor",
        3: "ray::call:c1",  # a bound actor, titled by its call's live task
        4: "python -m simulator.cli simulate --calls=2",
        5: "/usr/bin/redis-server 127.0.0.1:6379",
        6: "ray::IDLE",
    }
    before = {1: 10.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 0.5}
    after = {1: 10.03, 2: 1.01, 4: 2.02, 5: 0.5, 6: 0.004}  # 3 exited, 6 started meanwhile
    cpu = GroupCpu.between(before, after, 0.05, gateway_pid=1, command=commands.get)  # type: ignore[arg-type]
    per_call = cpu.per_call_ms(2)
    assert round(per_call[GATEWAY], 3) == 15.0 and round(per_call[CALL_ACTORS], 3) == 5.0
    assert round(per_call[STAND_IN], 3) == 10.0 and round(per_call[OTHER], 3) == 2.0
    assert round(cpu.cores_busy, 2) == 1.28
    assert cpu.to_json(2)["per_call_ms"][GATEWAY] == 15.0


async def test_a_burst_some_call_never_finished_has_no_cpu_reading() -> None:
    never = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(asyncio.wait_for(never, None))
    await asyncio.sleep(0)
    assert call_setup.finished_or_cancel(waiting) is None  # raised InvalidStateError before
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled()
    reading = GroupCpu(0.1, {GATEWAY: 0.01})
    done = asyncio.create_task(asyncio.sleep(0, reading))
    await done
    assert call_setup.finished_or_cancel(done) is reading


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


def test_a_load_generators_report_reads_back_for_the_set_up_records() -> None:
    report = CallReport(3, "+1", "call-x", answered=True, time_to_connected_s=0.25, frames_sent=9)
    back = CallReport.from_summary(orjson.loads(orjson.dumps(report.summary())))
    assert (back.index, back.call_connection_id, back.answered) == (3, "call-x", True)
    assert (back.time_to_connected_s, back.frames_sent) == (0.25, 9)


def test_the_load_generator_reads_secrets_that_begin_with_a_dash(tmp_path: Path) -> None:
    # token_urlsafe secrets begin with "-" one time in 64; argparse took such a value for a flag.
    acs = ExternalAcs(port=1, access_key="-key", audience="-aud", event_grid_secret="-secret")
    argv = load_generator_command(acs, "http://127.0.0.1:9", 1, tmp_path / "r.json")
    parsed: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("simulator.cli.run_simulate", lambda args: parsed.update(vars(args)) or 0)
        assert simulator_main(argv[3:]) == 0
    assert (parsed["access_key"], parsed["audience"], parsed["event_grid_secret"]) == (
        "-key",
        "-aud",
        "-secret",
    )


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


def test_checkpoint_verdict_compares_p99_with_a_single_set() -> None:
    from bench.checkpoint import Samples, Verdict
    from bench.checkpoint import table as checkpoint_table

    samples = Samples(checkpoint_ms=[0.5, 1.0, 1.5], set_ms=[0.5, 0.8, 1.0], quiet_set_ms=[0.2])
    s = samples.spreads()
    verdict = Verdict.of(s["checkpoint"], s["set_same_load"])
    assert verdict.ratio_p99 == pytest.approx(1.5) and verdict.within_ratio
    assert verdict.p99_under and verdict.max_under
    slow = Verdict.of(spread([1.0, 12.0]), spread([1.0, 2.0]))
    assert not slow.within_ratio and not slow.p99_under and not slow.max_under
    assert Verdict.of(None, s["set_same_load"]).ratio_p99 is None
    text = checkpoint_table(samples, calls=3)
    assert "checkpoint (3 calls at once)" in text and "p99 1.50x" in text


async def test_checkpoint_smoke_run_on_a_private_redis() -> None:
    from bench.checkpoint import run_checkpoint

    out = io.StringIO()
    result = await run_checkpoint(Settings(), 2, out, duration_s=1.5)
    assert result.ok, out.getvalue()
    (run,) = result.runs
    assert run["checkpoints"] > 0 and run["summary_ms"]["set_same_load"]["n"] > 0
    assert "2 live calls" in out.getvalue()
    assert "single SET, same load" in result.table


def test_density_reads_private_memory_and_cpu_from_proc() -> None:
    import os

    from bench.density import Reading, measure_window, ratio, summaries
    from bench.density import table as density_table
    from bench.proc_stats import private_kib, proc_cpu_s

    assert (private_kib(os.getpid()) or 0) > 0 and proc_cpu_s(os.getpid()) is not None
    assert private_kib(2**22 + 1) is None and proc_cpu_s(2**22 + 1) is None
    readings = [Reading("call", os.getpid()), Reading("bare", os.getpid())]
    measure_window(readings, 0.0, sleep=lambda _: None)
    assert all(r.uss_mib and r.cpu_percent is not None for r in readings)
    s = summaries([Reading("call", 1, 60.0, 1.0), Reading("bare", 2, 50.0, 1.0)])
    assert ratio(s["call"]["uss_mib"], s["bare"]["uss_mib"]) == pytest.approx(1.2)
    text = density_table([Reading("call", 1, 60.0, 1.0), Reading("bare", 2, 50.0, 1.0)], 1, 20)
    assert "1.20x" in text and "memory met" in text


def test_density_reads_a_process_cpu_until_it_is_gone() -> None:
    import subprocess
    import sys

    from bench.density import Reading, cpu_until_gone
    from bench.proc_stats import proc_cpu_s

    child = subprocess.Popen([sys.executable, "-c", "sum(range(3_000_000))"])
    readings = [Reading("call", child.pid)]
    before = {child.pid: proc_cpu_s(child.pid)}
    reaper = threading.Thread(target=child.wait)  # a zombie keeps its /proc entry: reap it
    reaper.start()
    cpu_until_gone(readings, before, timeout_s=30)
    reaper.join()
    assert readings[0].exit_cpu_s is not None and readings[0].exit_cpu_s >= 0


def test_archive_table_shows_a_skipped_store() -> None:
    from bench.archive import COSMOS, SQLITE, CallEnd, StoreRun
    from bench.archive import table as archive_table

    sqlite = StoreRun(SQLITE, 2, ends=[CallEnd("a", 1.0, 2.0, 50.0, 2), CallEnd("b", error="x")])
    cosmos = StoreRun(COSMOS, 2, note="skipped: emulator not installed")
    assert sqlite.status == "calls_failed" and cosmos.status == "skipped"
    text = archive_table([sqlite, cosmos])
    assert "1/2" in text and "skipped: emulator not installed" in text
    assert "50.0 / 50.0 / 50.0" in text and "NOT met" in text


@pytest.mark.slow  # local Ray, call actors
async def test_density_smoke_run(ray_cluster: dict[str, object]) -> None:
    from bench.density import run_density

    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await run_density(settings, 1, out, window_s=1.0, settle_s=0.0)
    assert result.ok, out.getvalue()
    kinds = sorted(r["kind"] for r in result.runs[0]["per_actor"])
    assert kinds == ["bare", "call"] and "private memory, USS (MB)" in result.table
    (call,) = [r for r in result.runs[0]["per_actor"] if r["kind"] == "call"]
    assert call["exit_cpu_s"] is not None and "CPU from shutdown to exit" in result.table


@pytest.mark.slow  # local Ray, call actors, the Cosmos emulator when installed
async def test_archive_smoke_run(ray_cluster: dict[str, object]) -> None:
    from bench.archive import run_archive

    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await run_archive(settings, 1, out)
    assert result.ok, out.getvalue()
    sqlite = result.runs[0]
    assert (sqlite["store"], sqlite["status"], sqlite["measured"]) == ("sqlite", "ok", 1)
    assert sqlite["per_call"][0]["turns_archived"] == 2
    assert result.runs[1]["status"] in ("ok", "skipped")


def test_data_plane_reads_cpu_from_proc_and_tabulates_a_run() -> None:
    assert cpu_percent(1.0, 1.5, 10.0) == pytest.approx(5.0)
    assert data_plane.latency_summary([])["p50"] is None
    summary = data_plane.latency_summary([float(i) for i in range(1, 1001)])
    assert summary["p99"] == 990.0 and summary["p99_9"] in (999.0, 1000.0)

    run = data_plane.DataPlaneRun(
        calls=2, talk_s=8.0, window_s=10.0, streaming=2, answered=2, archived=2
    )
    run.gateway_cpu_pct, run.floor_cpu_pct, run.relay_floor_cpu_pct = 4.0, 1.0, 0.5
    run.per_call = [
        data_plane.CallMeasure("a", 1, 2.0, 500, frames_sent=600, frames_in=600,
                               latency_p50_ms=1.0, latency_p99_ms=5.0),
        data_plane.CallMeasure("b", 2, 3.0, 500, frames_sent=600, frames_in=590,
                               latency_p50_ms=2.0, latency_p99_ms=9.0),
    ]
    assert (run.frame_rate, run.lost, run.gateway_cpu_per_call) == (100.0, 10, 2.0)
    assert run.capacity_estimate(2) == pytest.approx(100.0 / 0.09 * 2)
    ray_b = data_plane.Baseline("ray", 100.0, 100.0, {"p50": 2.0}, saturated_rate=1000.0)
    sock_b = data_plane.Baseline("sock", 100.0, 100.0, {"p50": 0.1}, saturated_rate=1e6)
    saturated = data_plane.SaturatedRun(
        calls=2, audio_s=10.0, window_s=0.5, window_frames=10_000, frames_sent=1000,
        frames_in=1000,
        cpu=GroupCpu(0.5, {GATEWAY: 0.25, CALL_ACTORS: 0.25, STAND_IN: 0.5, OTHER: 0.0}),
    )  # fmt: skip
    assert saturated.frames_expected == 1000 and saturated.rate == 20_000.0
    assert saturated.data_plane_cores() == 1.0  # the load generator's CPU left out
    assert saturated.rate_apart(2) == 40_000.0
    text = data_plane.table(run, saturated, ray_b, sock_b, cores=2)
    assert "1,200 / 1,190 / 10" in text and "2.00% of a core" in text
    assert "20,000/s (40,000/s with the load generator apart)" in text and "20.00x" in text
    assert "0.50%  (gateway vs it: 4.00x)" in text
    checks = data_plane.targets(run, saturated, ray_b, sock_b)
    assert checks["gateway_at_most_0_3pct_core_per_call"] is False
    assert checks["data_plane_at_least_20x_ray_call"] is True
    assert checks["data_plane_at_least_half_raw_socket"] is False
    assert run.to_json()["frames_lost"] == 10
    assert saturated.to_json(2)["rate_load_generator_apart"] == 40_000.0


@pytest.mark.slow  # local Ray, a real-time call, a subprocess load generator
async def test_data_plane_smoke_run(ray_cluster: dict[str, object]) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await data_plane.run_data_plane(settings, 1, out, talk_s=5.0, window_s=1.0)
    assert result.ok, out.getvalue() + result.table
    doc = result.runs[0]
    assert doc["data_plane"]["answered"] == 1 and doc["data_plane"]["frames_sent"] > 0
    assert doc["data_plane_saturated"]["window_frames"] > 0
    assert doc["data_plane_saturated"]["frames_lost"] == 0
    assert doc["data_plane"]["relay_floor_cpu_pct_per_call"] is not None
    assert doc["ray_call_per_frame"]["saturated_rate"] > 0
    assert doc["raw_loopback_socket"]["saturated_rate"] > 0
    assert "Ray call per frame" in result.table


def _plane_run(calls: int, worst_p99_ms: float, lost: int = 0) -> data_plane.DataPlaneRun:
    run = data_plane.DataPlaneRun(
        calls=calls, talk_s=8.0, window_s=10.0, streaming=calls, answered=calls, archived=calls
    )
    run.gateway_cpu_pct = 1.0 * calls
    run.per_call = [
        data_plane.CallMeasure(f"c{i}", i, 2.0, 500, frames_sent=600, frames_in=600,
                               latency_p50_ms=1.0, latency_p99_ms=worst_p99_ms)
        for i in range(calls)
    ]  # fmt: skip
    run.per_call[-1].frames_in = 600 - lost
    return run


def test_data_plane_max_steps_up_and_keeps_the_largest_count_that_holds() -> None:
    assert data_plane_max.steps(40) == [10, 20, 30, 40]
    assert data_plane_max.steps(2) == [1, 2] and data_plane_max.steps(1) == [1]
    assert data_plane_max.steps(6) == [2, 4, 6]
    with pytest.raises(ValueError):
        data_plane_max.steps(0)

    held = data_plane_max.Step(_plane_run(10, 12.0))
    slow = data_plane_max.Step(_plane_run(20, 25.0))
    lossy = data_plane_max.Step(_plane_run(20, 12.0, lost=1))
    cut_short = data_plane_max.Step(_plane_run(20, 12.0))
    cut_short.run.streaming, cut_short.run.note = 19, "1 calls not streaming through the window"
    assert held.holds and not slow.holds and not lossy.holds and not cut_short.holds
    assert data_plane_max.largest_holding([held, slow]) == 10
    assert data_plane_max.largest_holding([slow]) is None
    text = data_plane_max.table([held, cut_short])
    assert "largest number of calls that holds: 10" in text and "no: 1 calls not" in text


@pytest.mark.slow  # local Ray, real-time calls, a subprocess load generator per step
async def test_data_plane_max_smoke_run(ray_cluster: dict[str, object]) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await data_plane_max.run_data_plane_max(settings, 2, out, talk_s=5.0, window_s=1.0)
    assert result.ok, out.getvalue() + result.table
    doc = result.runs[0]
    assert [step["calls"] for step in doc["steps"]][:1] == [1]
    assert doc["steps"][0]["data_plane"]["frames_sent"] > 0
    assert "largest number of calls" in result.table or "no step held" in result.table


def test_reply_latency_table_subtracts_the_models_time() -> None:
    from bench.reply_latency import MODEL_TIME_MS, CallRun, Measured, model_times
    from bench.reply_latency import table as reply_table

    runs = [
        CallRun("a", [MODEL_TIME_MS + 5.0, MODEL_TIME_MS + 7.0], lines=["x", "y"]),
        CallRun("b", [MODEL_TIME_MS + 80.0], error="TimeoutError", lines=["z", "w"]),
    ]
    # The stand-in served "x" late (its time 230 ms), "y" on time; it never saw "z".
    timings = [
        {"last_user_text": "x", "at": 1.0, "token_at": [1.2, 1.23]},
        {"last_user_text": "y", "at": 2.0, "token_at": [2.2, 2.22]},
    ]
    for run in runs:
        run.model_ms = model_times(run, timings)
    assert runs[0].model_ms == [pytest.approx(230.0), pytest.approx(220.0)]
    assert runs[1].model_ms == [None]
    measured = Measured(calls=2, turns=2, runs=runs)
    assert not measured.ok
    s = measured.spreads()
    assert s["overhead"] is not None and s["overhead"].p50 == pytest.approx(7.0)
    assert s["own"] is not None and s["own"].max == pytest.approx(MODEL_TIME_MS + 7.0 - 220.0)
    text = reply_table(measured)
    assert "replies measured: 3/4" in text and "NOT met (80.0 ms)" in text


@pytest.mark.slow  # local Ray, a call actor, the model stand-in in a subprocess
async def test_reply_latency_smoke_run(ray_cluster: dict[str, object]) -> None:
    from bench.reply_latency import run_reply_latency

    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    result = await run_reply_latency(settings, 1, out, turns=1)
    assert result.ok, out.getvalue() + result.table
    (call,) = result.runs[0]["per_call"]
    assert len(call["latency_ms"]) == 1 and not call["error"]
    assert call["actor"]["replies"] >= 1 and call["actor"]["tokens_out"] > 0
    assert "overhead (minus the model's" in result.table


@pytest.mark.slow  # local Ray
async def test_the_frame_floor_answers_every_frame_and_reads_its_cpu(
    ray_cluster: dict[str, object],
) -> None:
    floor = await measure_floor(actors=1, window_s=0.5)
    assert floor.frames > 0 and len(floor.cpu_pct) == 1 and floor.cpu_p50 is not None
