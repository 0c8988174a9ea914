"""The fake gateway (tests/fake_gateway.py) that the simulator tests answer calls with."""

from __future__ import annotations

from simulator.service import AcsStandIn
from tests.fake_gateway import FakeGateway


async def test_fake_gateway_validates_an_event_grid_subscription() -> None:
    async with AcsStandIn() as acs, FakeGateway(acs) as gateway:
        assert await acs.validate_subscription(gateway.url)
