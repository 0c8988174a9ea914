"""The stand-in's POSTs against a real local HTTP server, and against a port nobody serves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from simulator.devstack.local_redis import free_port
from simulator.http_post import Poster, PostFailed
from tests.helpers import http_server


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=202, body=request.headers["X-Tag"].encode() + body)

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with http_server(app) as url:
        yield f"{url}/echo"


async def test_a_post_returns_the_status_and_body(echo_url: str) -> None:
    poster = Poster(timeout_s=5.0)
    try:
        posted = await poster.post(echo_url, b"[1]", {"X-Tag": "t:"})
    finally:
        await poster.close()
    assert (posted.status, posted.body) == (202, b"t:[1]")


async def test_an_unreachable_gateway_fails_with_the_error_type_only() -> None:
    port = free_port()  # free a moment ago: nobody listens on it
    poster = Poster(timeout_s=5.0)
    try:
        with pytest.raises(PostFailed) as failed:
            await poster.post(f"http://127.0.0.1:{port}/api?code=secret", b"[]", {})
    finally:
        await poster.close()
    assert "secret" not in str(failed.value)
    assert str(failed.value) == "ClientConnectorError"
