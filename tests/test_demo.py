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
    ReplyFigures,
    demo_model,
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


def test_reply_figures_sum_the_calls_replies() -> None:
    metrics = [
        {
            "reply_first_audio_ms_p50": p50,
            "reply_first_audio_ms_p99": p99,
            "reply_ttft_ms_p50": 200.0,
            "replies_cut": 1,
            "reply_failures": {"timeout": 1},
            "tokens_in": 100,
            "tokens_out": 20,
        }
        for p50, p99 in ((210.0, 230.0), (220.0, 260.0))
    ]
    figures = ReplyFigures.of(metrics)
    assert (figures.first_audio_p50_ms, figures.first_audio_p99_ms) == (215.0, 260.0)
    assert (figures.cut, figures.fallbacks) == (2, 2)
    assert (figures.tokens_in, figures.tokens_out) == (200, 40)
    text = " ".join(" ".join(row) for row in figures.rows(lambda v: f"{v:.0f} ms"))
    assert "215 ms / 260 ms" in text and "2 cut by the caller, 2 fallbacks" in text
    assert ReplyFigures.of([{}]).first_audio_p50_ms is None


async def test_demo_openai_without_a_model_talks_to_the_stand_in() -> None:
    out = io.StringIO()
    async with demo_model(Settings(), "openai", out) as settings:
        model = settings.assistant
        assert model.responder == "openai" and model.base_url is not None
        assert "model stand-in" in out.getvalue()
    configured = Settings(responder="openai", llm_base_url="http://model:1/v1")
    async with demo_model(configured, None, out) as settings:
        assert settings == configured  # a model of one's own: no stand-in
    async with demo_model(Settings(), None, out) as settings:
        assert settings.assistant.responder == "echo"
