"""``rtvoice demo``: its scenario and summary as data, and one real run on the local stack."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from simulator import CallReport
from simulator.devstack.demo import (
    DemoOptions,
    DemoSummary,
    PoolFigures,
    demo_scenario,
    run_demo,
)
from storage.settings import Settings


def test_scenario_gives_each_caller_a_number_and_voice() -> None:
    scenario = demo_scenario(calls=3, lines=2)
    callers = [scenario.caller_for(i) for i in range(3)]
    assert len({c.caller for c in callers}) == 3
    assert len({c.voice for c in callers}) == 3
    assert all(len(c.lines) == 2 for c in callers)
    with pytest.raises(ValueError):
        demo_scenario(calls=0, lines=1)


def test_summary_counts_turns_and_latency() -> None:
    reports = [CallReport(index=i, caller="+1", call_connection_id=f"c{i}") for i in range(2)]
    for report in reports:
        report.answered = True
        report.time_to_connected_s = 0.2
    transcripts = [
        {
            "turns": [{"role": "user"}, {"role": "assistant"}],
            "metrics": {
                "frame_latency_ms_p50": p50,
                "frame_latency_ms_p99": p99,
                "backlog_frames": 10,
                "backlog_wait_ms_max": p99 * 100,
            },
        }
        for p50, p99 in ((1.0, 5.0), (3.0, 9.0))
    ]
    pool = PoolFigures(spares=2, cold_starts=0, bind_p50_ms=12.0, bind_p99_ms=30.0)
    summary = DemoSummary.build(reports, transcripts, (100, 20), pool, "/a.sqlite3", None)
    assert summary.ok
    assert (summary.user_turns, summary.assistant_turns) == (2, 2)
    assert summary.latency_p50_ms == 2.0 and summary.latency_p99_ms == 9.0
    assert summary.backlog_frames == 20 and summary.backlog_wait_ms_max == 900.0
    table = summary.table()
    assert "2/2" in table and "rtvoice transcript c0" in table
    assert "2 spares ready; 0 calls started cold; bind p50 / p99 12.0 ms / 30.0 ms" in table

    missing = DemoSummary.build(reports, transcripts[:1], (0, 0), pool, "/a.sqlite3", None)
    assert not missing.ok


@pytest.mark.slow  # the whole demo on local Ray
async def test_demo_runs_calls_to_archived_transcripts(
    ray_cluster: dict[str, object], tmp_path: Path
) -> None:
    out = io.StringIO()
    settings = Settings(ray_namespace=str(ray_cluster["namespace"]))
    options = DemoOptions(
        calls=2, lines=1, dashboard=False, archive_path=str(tmp_path / "demo.sqlite3")
    )
    assert await run_demo(settings, options, out) == 0
    text = " ".join(out.getvalue().split())  # the table's column width is not the point
    assert "calls answered 2/2" in text
    assert "transcripts archived 2/2" in text
    assert "2 caller, 2 assistant" in text
