"""Delivery of Call Automation callbacks: CloudEvent arrays POSTed with a fresh RS256 bearer token.

Owns the delivery knobs (duplicate, reorder, delay, retry); never builds event bodies itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_incrementing,
)

from simulator.http_post import Poster, PostFailed
from simulator.jwt_issuer import CALLBACK_TOKEN_LIFETIME_S, JwtIssuer, TokenFault
from simulator.script import CallbackKnobs
from simulator.wire import Json

RETRY_BACKOFF_S = 0.2


@dataclass(frozen=True, slots=True)
class Delivery:
    event_type: str
    event_id: str
    status: int | None  # None: the gateway could not be reached

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def delivery_order(events: list[Json], knobs: CallbackKnobs) -> list[Json]:
    """The order the gateway sees: neighbours swapped if reordering, each twice if duplicating."""
    ordered = list(events)
    if knobs.reorder:
        for i in range(0, len(ordered) - 1, 2):
            ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    if knobs.duplicate:
        ordered = [event for event in ordered for _ in range(2)]
    return ordered


class CallbackSender:
    def __init__(
        self,
        http: Poster,
        issuer: JwtIssuer,
        knobs: CallbackKnobs,
        token_fault: TokenFault = TokenFault.NONE,
    ) -> None:
        self._http = http
        self._issuer = issuer
        self._knobs = knobs
        self._token_fault = token_fault

    async def deliver(self, url: str, events: list[Json]) -> list[Delivery]:
        """POST each event as its own one-element array, in ``delivery_order``."""
        results = []
        for event in delivery_order(events, self._knobs):
            if self._knobs.delay_s:
                await asyncio.sleep(self._knobs.delay_s)
            results.append(await self._post(url, event))
        return results

    async def _post(self, url: str, event: Json) -> Delivery:
        """POST one event, re-delivered ``retries`` times (0.2 s, 0.4 s, ... apart) on a 5xx or a
        connection failure; the last status stands (None: the gateway was never reached)."""
        body = orjson.dumps([event])

        async def post_once() -> int | None:
            headers = {"Content-Type": "application/json"}
            headers.update(self._issuer.bearer(CALLBACK_TOKEN_LIFETIME_S, self._token_fault))
            try:
                return (await self._http.post(url, body, headers)).status
            except PostFailed:
                return None

        redeliver = AsyncRetrying(
            retry=retry_if_result(_undelivered),
            wait=wait_incrementing(start=RETRY_BACKOFF_S, increment=RETRY_BACKOFF_S),
            stop=stop_after_attempt(self._knobs.retries + 1),
            retry_error_callback=_last_status,
        )
        status: int | None = await redeliver(post_once)
        return Delivery(str(event["type"]), str(event["id"]), status)


def _undelivered(status: int | None) -> bool:
    return status is None or status >= 500


def _last_status(state: RetryCallState) -> int | None:
    """Retries exhausted: the last attempt's status, as if there had been no retry policy."""
    assert state.outcome is not None
    status: int | None = state.outcome.result()
    return status
