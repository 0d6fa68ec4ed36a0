"""A restarted projector folds from the snapshot it stored, not from the start of the log.

The state bucket holds the projection at ``position`` N. A projector started again loads it
and folds only the events after N: with its durable consumer kept (the usual restart), and
with the durable gone (removed meanwhile), when the new one starts at N + 1. Counted, not timed.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.replay import synthesise
from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.replay import replay
from orchestrator.projector import Projector
from orchestrator.runtime import Delivery, Outcome

FIRST, LATER = 400, 25


class CountingProjector(Projector):
    """The real projector, counting what it is handed and what it really folds."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(bus)
        self.handed: list[int] = []
        self.folded: list[int] = []

    async def handle(self, delivery: Delivery) -> Outcome:
        self.handed.append(delivery.seq)
        return await super().handle(delivery)

    async def _fold(self, delivery: Delivery) -> None:
        if delivery.seq > self.position:
            self.folded.append(delivery.seq)
        await super()._fold(delivery)


async def caught_up(projector: Projector, seq: int) -> None:
    async with asyncio.timeout(60), projector.changed:
        await projector.changed.wait_for(lambda: projector.position >= seq)


@pytest.mark.parametrize("durable", ["kept", "removed"])
async def test_a_restarted_projector_folds_only_the_events_after_its_snapshot(
        bus: EventBus, durable: str) -> None:
    events = synthesise(FIRST + LATER, 4, seed=17)
    await bus.publish_all(events[:FIRST])
    first = CountingProjector(bus)
    await first.start()
    try:
        await caught_up(first, FIRST)
    finally:
        await first.stop()
    assert first.folded == list(range(1, FIRST + 1))

    if durable == "removed":
        await bus.js.delete_consumer(subjects.STREAM, first.durable)
    await bus.publish_all(events[FIRST:])
    restarted = CountingProjector(bus)
    await restarted.start()
    try:
        assert restarted.position == FIRST  # the snapshot, loaded before anything is handed
        await caught_up(restarted, FIRST + LATER)
        later = list(range(FIRST + 1, FIRST + LATER + 1))
        assert restarted.folded == later
        assert restarted.handed == later  # not even handed the events it already holds
        report = await replay(bus, lock=restarted.folding)  # and the result is the log's fold
        assert report.equal and report.seq == FIRST + LATER
    finally:
        await restarted.stop()
