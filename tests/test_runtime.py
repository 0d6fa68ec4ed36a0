"""Retries that end: every message ends in an outcome event, never silently."""

from __future__ import annotations

import asyncio

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import Event, new_event
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome, Retry
from tests.support.waits import wait_for_events


def commit(env: str, n: int) -> Event:
    return new_event("conveyor.commit.detected", env=env, correlation=f"sha{n}", key=str(n),
                     data={"n": n})


async def test_exhausting_max_deliver_is_a_dead_event_with_reason_and_original(
        bus: EventBus) -> None:
    attempts: list[int] = []

    async def always_busy(d: Delivery) -> Outcome:
        attempts.append(d.attempt)
        return Retry(0.05, reason="renderer backend unavailable: connection refused")

    c = Consumer(bus, ConsumerSpec(durable="t-dead", stage="render",
                                   filters=["conveyor.events.*.commit.detected"],
                                   handler=always_busy, max_deliver=3))
    await c.start()
    original = commit("dev", 1)
    try:
        await bus.publish(original)
        events = await wait_for_events(
            bus, lambda evs: any(e.type == "conveyor.render.dead" for e in evs))
    finally:
        await c.stop()  # waits for the term() that follows the dead event
    info = await bus.js.consumer_info("CONVEYOR", "t-dead")
    dead = next(e for e in events if e.type == "conveyor.render.dead")
    assert attempts == [1, 2, 3]
    assert dead.data["reason"] == "renderer backend unavailable: connection refused"
    assert dead.data["original"] == original.to_dict()
    assert dead.causationid == original.id and dead.subject == "dev"
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_malformed_message_is_a_dead_event_not_a_log_line(bus: EventBus) -> None:
    seen: list[Delivery] = []

    async def handler(d: Delivery) -> Outcome:
        seen.append(d)
        raise AssertionError("never called for a malformed message")

    c = Consumer(bus, ConsumerSpec(durable="t-bad", stage="render",
                                   filters=["conveyor.events.*.commit.detected"],
                                   handler=handler))
    await c.start()
    try:
        ack = await bus.js.publish("conveyor.events.dev.commit.detected", b"{not json",
                                   stream="CONVEYOR")
        events = []
        async with asyncio.timeout(30):  # the log holds a non-event: read the dead letters only
            async for stored in bus.read(["conveyor.events.*.render.dead"], stop_at_end=False):
                events.append(stored.event)
                break
    finally:
        await c.stop()  # waits for the term() that follows the dead event
    info = await bus.js.consumer_info("CONVEYOR", "t-bad")
    dead = next(e for e in events if e.type == "conveyor.render.dead")
    assert dead.subject == "dev" and dead.data["malformed"] is True
    assert dead.data["stream_seq"] == ack.seq and dead.data["payload"] == "{not json"
    assert "not a valid event" in dead.data["reason"]
    assert seen == [] and info.num_ack_pending == 0


async def test_transient_errors_back_off_then_succeed(bus: EventBus) -> None:
    delays: list[float] = []

    async def flaky(d: Delivery) -> Outcome:
        if d.attempt < 3:
            delays.append(0.05 * 2 ** (d.attempt - 1))
            return Retry(delays[-1], reason="busy",
                         emit=[new_event("conveyor.apply.retrying", env=d.event.subject,
                                         cause=d.event, key=str(d.attempt), data={})])
        return Ack([new_event("conveyor.apply.succeeded", env=d.event.subject, cause=d.event,
                              data={"attempt": d.attempt})])

    c = Consumer(bus, ConsumerSpec(durable="t-flaky", stage="apply",
                                   filters=["conveyor.events.*.commit.detected"], handler=flaky))
    await c.start()
    try:
        await bus.publish(commit("dev", 2))
        events = await wait_for_events(
            bus, lambda evs: any(e.type == "conveyor.apply.succeeded" for e in evs))
    finally:
        await c.stop()
    assert [e.type for e in events].count("conveyor.apply.retrying") == 2
    assert next(e for e in events if e.type == "conveyor.apply.succeeded").data["attempt"] == 3
