"""Awaiting conditions on the event log (tests, benchmarks, demo): no sleeps, just the log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import Event


async def wait_for_events(bus: EventBus, predicate: Callable[[list[Event]], bool],
                          timeout: float = 30.0) -> list[Event]:
    """Follow the log from the start until ``predicate(all events so far)`` holds."""
    seen: list[Event] = []

    async def follow() -> None:
        if predicate(seen):
            return
        async for stored in bus.read(start_seq=1, stop_at_end=False):
            seen.append(stored.event)
            if predicate(seen):
                return

    try:
        await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        types = [f"{e.subject}:{e.type}" for e in seen]
        raise AssertionError(f"condition not met in {timeout}s; events: {types}") from None
    return seen
