"""``rtvoice simulate``: argument handling, progress bar, summary table and exit status."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from simulator.audio import AudioFormat, load_wav, speech_like
from simulator.cli import (
    add_simulate_parser,
    render_progress,
    save_heard_audio,
    simulate,
    webhook_path,
)
from simulator.devstack.local_redis import free_port
from simulator.jwt_issuer import ACS_ISSUER
from simulator.report import CallReport
from simulator.scenario import ScenarioReport
from tests.fake_gateway import FakeGateway
from tests.helpers import http_server


@dataclass
class _Acs:
    endpoint: str
    access_key: str
    audience: str
    issuer: str = ACS_ISSUER

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/calling/keys"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rtvoice")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_render_progress() -> None:
    assert render_progress(0, 4, 0.0, width=8) == "[--------] 0/4 calls     0.0s"
    assert render_progress(3, 4, 12.34, width=8) == "[######--] 3/4 calls    12.3s"


def test_parser_defaults_and_dispatch() -> None:
    args = _parse(["simulate", "--gateway", "http://127.0.0.1:8000"])
    assert args.calls is None and args.duration == 10.0 and args.hangup == "caller"
    assert args.func.__name__ == "run_simulate"


async def test_simulate_runs_calls_and_prints_a_summary() -> None:
    port = free_port()
    acs = _Acs(
        endpoint=f"http://127.0.0.1:{port}",
        access_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        audience="resource-under-test",
    )
    async with FakeGateway(acs) as gateway:
        args = _parse(
            [
                "simulate",
                "--gateway",
                gateway.url,
                "--calls",
                "2",
                "--duration",
                "1",
                "--fast",
                "--port",
                str(port),
                "--access-key",
                acs.access_key,
                "--audience",
                acs.audience,
                "--json",
                "-",
            ]
        )
        out, err = io.StringIO(), io.StringIO()
        status = await simulate(args, out, err)

    assert status == 0, out.getvalue()
    text = out.getvalue()
    table, document = text.split("\n{", 1)
    assert "connect_s" in table.splitlines()[0]
    assert "answered=2" in table
    report = json.loads("{" + document)
    assert report["summary"]["calls"] == 2 and report["summary"]["unexpected"] == 0
    assert all(call["frames_sent"] > 0 for call in report["calls"])
    assert f"endpoint=http://127.0.0.1:{port}" in err.getvalue()


def test_save_heard_audio(tmp_path: Path) -> None:
    fmt = AudioFormat(24000)
    call = CallReport(0, "+1", "call-0", audio_format="pcm24KMono")
    call.heard_pcm = speech_like(0.1, fmt, voice=1)
    save_heard_audio(ScenarioReport(calls=[call, CallReport(1, "+2", "call-1")]), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["call-000-heard.wav"]
    assert load_wav(tmp_path / "call-000-heard.wav", fmt) == call.heard_pcm


async def test_simulate_exits_nonzero_when_nobody_answers() -> None:
    args = _parse(
        ["simulate", "--gateway", f"http://127.0.0.1:{free_port()}", "--answer-timeout", "0.2"]
    )
    out = io.StringIO()
    assert await simulate(args, out, io.StringIO()) == 1
    assert "not answered" in out.getvalue()


def test_event_grid_secret_goes_in_the_webhook_query() -> None:
    assert webhook_path("/api/incoming-call", None) == "/api/incoming-call"
    assert webhook_path("/hook", "s e/cret") == "/hook?code=s+e%2Fcret"
    assert webhook_path("/hook?x=1", "abc") == "/hook?x=1&code=abc"


async def test_warm_up_serves_the_token_keys_before_the_first_call_rings() -> None:
    """``--warm-up``: a gateway can fetch the stand-in's keys before the burst, as a gateway
    long in service holds ACS's."""
    rang: list[bytes] = []

    async def incoming(request: web.Request) -> web.Response:
        rang.append(await request.read())
        return web.Response(status=503)  # nobody answers: the call ends at its timeout

    app = web.Application()
    app.router.add_post("/api/incoming-call", incoming)
    port = free_port()
    async with http_server(app) as gateway_url:
        await _run_with_warm_up(gateway_url, port, rang)
    assert rang  # then the call rang


async def _run_with_warm_up(gateway_url: str, port: int, rang: list[bytes]) -> None:
    """The stand-in on ``port`` with a 3 s warm-up: its keys are served before a call rings."""
    args = _parse(
        [
            "simulate",
            "--gateway",
            gateway_url,
            "--port",
            str(port),
            "--answer-timeout",
            "0.2",
            "--warm-up",
            "3",
        ]
    )
    run = asyncio.create_task(simulate(args, io.StringIO(), io.StringIO()))
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/calling/keys") as response:
                    keys = await response.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        assert keys["keys"] and not rang  # the keys are up, and no call has rung yet
    await run
