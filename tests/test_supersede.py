"""Newest wins, per environment, immediately: the runtime's lanes with ``supersede``.

Handlers here are test doubles gated by events the test controls (no sleeps): A's handler
blocks until released, so B and C arrive while A runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import Event, new_event
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome, Retry
from tests.support.waits import wait_for_events


def render(env: str, n: int) -> Event:
    return new_event("conveyor.render.succeeded", env=env, correlation=f"c{n}", key=f"{env}{n}",
                     data={"n": n})


class Gated:
    """A handler that records calls and blocks on a per-commit gate."""

    def __init__(self, *, slow: frozenset[str] = frozenset(),
                 retry: frozenset[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.running: dict[str, int] = {}
        self.max_running: dict[str, int] = {}
        self.started = {c: asyncio.Event() for c in slow}
        self.gates = {c: asyncio.Event() for c in slow}
        self.retry = set(retry)

    async def handle(self, d: Delivery) -> Outcome:
        env, commit = d.event.subject, d.event.correlationid
        self.calls.append(f"{env}:{commit}")
        self.running[env] = self.running.get(env, 0) + 1
        self.max_running[env] = max(self.max_running.get(env, 0), self.running[env])
        try:
            if commit in self.gates:
                self.started[commit].set()
                await self.gates[commit].wait()
            if commit in self.retry:
                return Retry(3600.0, reason="target busy")  # an hour: only a cancel ends it
            return Ack([new_event("conveyor.apply.succeeded", env=env, cause=d.event, data={})])
        finally:
            self.running[env] -= 1

    async def supersede(self, older: Delivery, newest: Delivery) -> Sequence[Event]:
        return [new_event("conveyor.apply.superseded", env=older.event.subject,
                          cause=older.event, data={"by": newest.event.correlationid})]


def outcomes(events: list[Event]) -> dict[tuple[str, str], str]:
    return {(e.subject, e.correlationid): e.type.rsplit(".", 1)[1] for e in events
            if e.type in ("conveyor.apply.succeeded", "conveyor.apply.superseded")}


def done(pairs: set[tuple[str, str]]):  # type: ignore[no-untyped-def]
    return lambda events: pairs <= outcomes(events).keys()


async def consumer(bus: EventBus, h: Gated) -> Consumer:
    c = Consumer(bus, ConsumerSpec(durable="t-applier", stage="apply",
                                   filters=["conveyor.events.*.render.succeeded"],
                                   handler=h.handle, supersede=h.supersede, ack_wait=5.0))
    await c.start()
    return c


async def test_b_superseded_while_a_applies_and_c_runs_next(bus: EventBus) -> None:
    h = Gated(slow=frozenset({"c1"}))
    c = await consumer(bus, h)
    try:
        await bus.publish(render("dev", 1))
        await h.started["c1"].wait()
        await bus.publish_all([render("dev", 2), render("dev", 3), render("prod", 7)])
        # prod proceeds while dev's A is held: environments run in parallel
        await wait_for_events(bus, done({("prod", "c7")}))
        h.gates["c1"].set()
        events = await wait_for_events(bus, done({("dev", f"c{i}") for i in (1, 2, 3)}))
    finally:
        await c.stop()
    got = outcomes(events)
    assert got[("dev", "c1")] == "succeeded"
    assert got[("dev", "c2")] == "superseded"
    assert got[("dev", "c3")] == "succeeded"
    assert [x for x in h.calls if x.startswith("dev")] == ["dev:c1", "dev:c3"]
    assert h.max_running["dev"] == 1


async def test_newer_commit_cancels_a_backing_off_retry_at_once(bus: EventBus) -> None:
    h = Gated(retry=frozenset({"c1"}))
    c = await consumer(bus, h)
    try:
        await bus.publish(render("dev", 1))
        await wait_for_events(bus, lambda evs: "dev:c1" in h.calls)
        # c1 is now nak'ed for an hour; c2 must cancel it now, not when the hour is over
        await bus.publish(render("dev", 2))
        events = await wait_for_events(bus, done({("dev", "c1"), ("dev", "c2")}), timeout=10)
    finally:
        await c.stop()
    info = await bus.js.consumer_info("CONVEYOR", "t-applier")
    got = outcomes(events)
    assert got == {("dev", "c1"): "superseded", ("dev", "c2"): "succeeded"}
    assert h.calls == ["dev:c1", "dev:c2"]
    assert info.num_ack_pending == 0  # the parked message was term()ed, not left to expire


async def test_order_is_the_commit_order_not_the_arrival_order(bus: EventBus) -> None:
    """A late redelivery of an older render queued after a newer one is the one superseded."""
    h = Gated(slow=frozenset({"c0"}))
    c = Consumer(bus, ConsumerSpec(
        durable="t-order", stage="apply", filters=["conveyor.events.*.render.succeeded"],
        handler=h.handle, supersede=h.supersede,
        order=lambda d: int(d.event.data["n"])))
    await c.start()
    try:
        await bus.publish(render("dev", 0))
        await h.started["c0"].wait()
        await bus.publish_all([render("dev", 9), render("dev", 5)])  # 5 arrives last
        await wait_for_events(bus, lambda evs: len(evs) >= 3)
        h.gates["c0"].set()
        events = await wait_for_events(bus, done({("dev", "c9"), ("dev", "c5")}))
    finally:
        await c.stop()
    got = outcomes(events)
    assert got[("dev", "c9")] == "succeeded" and got[("dev", "c5")] == "superseded"
