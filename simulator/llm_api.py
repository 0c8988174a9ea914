"""A local stand-in for a model behind the chat-completions API, as ``simulator`` stands in for ACS.

Serves the exact wire format at the OpenAI path (``/v1/chat/completions``, bearer key) and the
Azure OpenAI path (``/openai/deployments/{deployment}/chat/completions?api-version=``, ``api-key``
header or an Entra bearer token), the model list (``/v1/models``, ``/openai/models``: what a
responder's warm-up asks for) and its own timings (``/standin/requests``: when each request came
and each token went, for benchmarks), streaming (server-sent events, ``data: [DONE]``, a usage chunk
when ``stream_options.include_usage``) and not. Replies are scripted (``script``) or, by default,
a short deterministic answer to the caller's last words; tokens are paced (time to first token,
then one token per ``token_s``). Faults, one per scripted reply: ``timeout`` (headers, then
silence), ``refusal`` (a refusal delta), ``filtered`` (400 ``content_filter``), ``rate_limit``
(429 with Retry-After) and ``drop`` (the connection closed mid-reply, no finish reason).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Fault = Literal["timeout", "refusal", "filtered", "rate_limit", "drop"]
FAULTS: tuple[str, ...] = ("timeout", "refusal", "filtered", "rate_limit", "drop")
REFUSAL_TEXT = "I'm sorry, I can't help with that."
TOKEN = re.compile(r"\s*\S+")  # a word with the space before it, as model tokens come
HOLD_S = 3600.0  # a ``timeout`` reply never comes; the client gives up first


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """What one request gets; ``text`` None: the default answer to the caller's last words."""

    text: str | None = None
    fault: Fault | None = None
    retry_after_s: float = 2.0  # rate_limit
    drop_after_tokens: int = 3  # drop
    ttft_s: float | None = None  # None: the stand-in's own

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")


@dataclass(slots=True)
class SeenRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    token_at: list[float] = field(default_factory=list)  # each content token sent (monotonic)

    def timing(self) -> dict[str, Any]:
        """When it came and when each token went (a benchmark subtracts the model's time)."""
        return {
            "path": self.path,
            "last_user_text": self.last_user_text,
            "at": self.at,
            "token_at": self.token_at,
        }

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body)


def last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def default_reply(body: dict[str, Any]) -> str:
    """A short answer that depends only on the caller's last words (repeatable in tests)."""
    heard = " ".join(last_user_text(body).split()[:8]).rstrip(".?!,")
    if not heard:
        return "Hello, how can I help you today?"
    return f"I heard you say {heard}. Let me look into that for you. One moment please."


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # runs inside someone else's process: their signal handlers stay


class LlmStandIn:
    """``async with LlmStandIn(ttft_s=0.2) as llm``: ``llm.base_url`` (OpenAI-compatible) and
    ``llm.azure_endpoint`` take the real ``openai`` client; ``llm.script(...)`` queues replies."""

    def __init__(
        self,
        *,
        ttft_s: float = 0.2,
        token_s: float = 0.02,
        api_key: str | None = None,
        reply: str | None = None,
        model: str = "rtvoice-standin",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if ttft_s < 0 or token_s < 0:
            raise ValueError("pacing must be >= 0")
        self.ttft_s = ttft_s
        self.token_s = token_s
        self.api_key = api_key  # None: any key or token is accepted
        self.reply = reply  # every unscripted reply; None: ``default_reply``
        self.model = model
        self.requests: list[SeenRequest] = []
        self._script: deque[ScriptedReply] = deque()
        self._sock = socket.socket()
        # Each token is its own small write: without this, Nagle holds one back until the
        # client's delayed ACK (~40 ms), which no real API adds. Accepted sockets inherit it.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # ``critical``: a dropped stream is a deliberate half-sent response, which uvicorn logs
        # as an application error.
        config = uvicorn.Config(self.app(), log_level="critical", lifespan="off")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        return self.url

    def script(self, *replies: ScriptedReply | str) -> None:
        """Queue replies for the next requests, in order (a string is a plain reply)."""
        for reply in replies:
            self._script.append(ScriptedReply(text=reply) if isinstance(reply, str) else reply)

    async def start(self) -> LlmStandIn:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None

    async def __aenter__(self) -> LlmStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the API --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self._completions,
                    methods=["POST"],
                ),
                Route("/v1/models", self._models),
                Route("/openai/models", self._models),
                Route("/standin/requests", self._timings),
            ]
        )

    async def _models(self, request: Request) -> Response:
        self.requests.append(SeenRequest(request.url.path, {}, dict(request.headers)))
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "rtvoice"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _timings(self, request: Request) -> Response:
        return JSONResponse([seen.timing() for seen in self.requests if seen.body])

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        return self.api_key in (request.headers.get("api-key"), bearer)

    async def _completions(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "the body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required", "invalid_request_error")
        seen = SeenRequest(request.url.path, body, dict(request.headers))
        self.requests.append(seen)
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        if "/openai/deployments/" in request.url.path and "api-version" not in request.query_params:
            return _error(404, "api-version is required", "404")
        reply = self._script.popleft() if self._script else ScriptedReply()
        if reply.fault == "rate_limit":
            headers = {"retry-after": f"{reply.retry_after_s:g}"}
            return _error(429, "Rate limit is exceeded.", "rate_limit_exceeded", headers)
        if reply.fault == "filtered":
            return _error(400, "The prompt was filtered.", "content_filter")
        model = str(body.get("model") or request.path_params.get("deployment") or self.model)
        text = reply.text if reply.text is not None else self.reply or default_reply(body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            usage = bool(isinstance(options, dict) and options.get("include_usage"))
            return StreamingResponse(
                self._events(reply, text, model, seen, usage), media_type="text/event-stream"
            )
        if reply.fault == "timeout":
            await asyncio.sleep(HOLD_S)
        await asyncio.sleep(self._ttft(reply))
        refused = reply.fault == "refusal"
        message = {
            "role": "assistant",
            "content": None if refused else text,
            "refusal": REFUSAL_TEXT if refused else None,
        }
        return JSONResponse(
            {
                **self._envelope(model, "chat.completion"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": self._usage(body, text),
            }
        )

    def _ttft(self, reply: ScriptedReply) -> float:
        return self.ttft_s if reply.ttft_s is None else reply.ttft_s

    def _envelope(self, model: str, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": model,
        }

    @staticmethod
    def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = sum(len(tokens(str(m.get("content") or ""))) for m in body["messages"])
        completion = len(tokens(text))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _events(
        self, reply: ScriptedReply, text: str, model: str, seen: SeenRequest, usage: bool
    ) -> AsyncIterator[bytes]:
        envelope = self._envelope(model, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({**envelope, "choices": [choice]}) + b"\n\n"

        if reply.fault == "timeout":
            await asyncio.sleep(HOLD_S)
        await asyncio.sleep(self._ttft(reply))
        yield chunk({"role": "assistant", "content": ""})
        if reply.fault == "refusal":
            yield chunk({"refusal": REFUSAL_TEXT})
            yield chunk({}, "stop")
        else:
            for i, token in enumerate(tokens(text)):
                if reply.fault == "drop" and i == reply.drop_after_tokens:
                    raise ConnectionAbortedError("stand-in: stream dropped mid-reply")
                if i:
                    await asyncio.sleep(self.token_s)
                seen.token_at.append(time.monotonic())
                yield chunk({"content": token})
            yield chunk({}, "stop")
        if usage:
            last = {**envelope, "choices": [], "usage": self._usage(seen.body, text)}
            yield b"data: " + orjson.dumps(last) + b"\n\n"
        yield b"data: [DONE]\n\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simulator.llm_api --port 8100``: the stand-in in a process of its own (its
    pacing then shares no event loop with what it serves), until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m simulator.llm_api", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.2, help="time to first token, seconds")
    parser.add_argument("--token-s", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--reply", default=None, help="every reply (default: echo the caller)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with LlmStandIn(
            ttft_s=args.ttft, token_s=args.token_s, reply=args.reply, port=args.port
        ) as llm:
            print(f"model stand-in: {llm.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
