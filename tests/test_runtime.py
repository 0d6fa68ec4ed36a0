"""Retries that end: every message ends in an outcome event, never silently."""

from __future__ import annotations

import asyncio

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import Event, new_event
from orchestrator.errors import ConfigError, TransientError
from orchestrator.runtime import (
    SILENT_FAIL,
    Ack,
    Consumer,
    ConsumerSpec,
    Delivery,
    Fail,
    Handler,
    Outcome,
    Retry,
    outcome_for_error,
)
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
    await bus.nc.flush()  # the term() is a plain publish: have the server read it first
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
    # the server handles a term() apart from consumer info requests: await its advisory
    terminated = await bus.nc.subscribe(
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.CONVEYOR.t-bad")
    await c.start()
    try:
        ack = await bus.js.publish("conveyor.events.dev.commit.detected", b"{not json",
                                   stream="CONVEYOR")
        events = []
        async with asyncio.timeout(30):  # the log holds a non-event: read the dead letters only
            async for stored in bus.read(["conveyor.events.*.render.dead"], stop_at_end=False):
                events.append(stored.event)
                break
        await terminated.next_msg(timeout=30)
    finally:
        await terminated.unsubscribe()
        await c.stop()
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


async def ended(bus: EventBus, durable: str, handler: Handler, original: Event,
                stage: str = "render") -> Event:
    """Run ``handler`` on ``original`` until a dead letter for it is in the log; return it."""
    c = Consumer(bus, ConsumerSpec(durable=durable, stage=stage,
                                   filters=["conveyor.events.*.commit.detected"],
                                   handler=handler, max_deliver=3))
    await c.start()
    try:
        await bus.publish(original)
        events = await wait_for_events(bus, lambda evs: any(
            e.type == f"conveyor.{stage}.dead" and e.causationid == original.id for e in evs))
    finally:
        await c.stop()
    await bus.nc.flush()  # the term() is a plain publish: have the server read it first
    info = await bus.js.consumer_info("CONVEYOR", durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # it was term()ed
    return next(e for e in events
                if e.type == f"conveyor.{stage}.dead" and e.causationid == original.id)


async def test_a_permanent_error_ends_in_a_dead_event_with_its_reason(bus: EventBus) -> None:
    attempts: list[int] = []

    async def refuses(d: Delivery) -> Outcome:
        attempts.append(d.attempt)
        raise ConfigError("unknown renderer 'kustomise'", file="conveyor.yaml", line=7,
                          field="environments.dev.render")

    original = commit("dev", 3)
    dead = await ended(bus, "t-permanent", refuses, original)
    assert attempts == [1]  # permanent: never retried
    assert dead.data["code"] == "InvalidConfig"
    assert dead.data["reason"] == ("conveyor.yaml:7: environments.dev.render: "
                                   "unknown renderer 'kustomise'")
    assert dead.data["original"] == original.to_dict() and dead.subject == "dev"


async def test_a_fail_without_events_is_not_a_silent_term(bus: EventBus) -> None:
    async def gives_up(d: Delivery) -> Outcome:
        return Fail(())

    dead = await ended(bus, "t-silent", gives_up, commit("dev", 4), stage="apply")
    assert dead.data["reason"] == SILENT_FAIL


async def test_a_transient_error_is_retried_after_its_delay(bus: EventBus) -> None:
    attempts: list[int] = []

    async def rate_limited(d: Delivery) -> Outcome:
        attempts.append(d.attempt)
        if d.attempt == 1:
            raise TransientError("429 from the cluster", reason="RateLimited", delay=0.05)
        return Ack([new_event("conveyor.apply.succeeded", env=d.event.subject, cause=d.event,
                              data={"attempt": d.attempt})])

    assert outcome_for_error(TransientError("x", delay=7.0), Delivery(commit("dev", 0), 1, 1),
                             stage="apply", consumer="c") == Retry(7.0, reason="Transient: x")
    c = Consumer(bus, ConsumerSpec(durable="t-transient", stage="apply",
                                   filters=["conveyor.events.*.commit.detected"],
                                   handler=rate_limited))
    await c.start()
    try:
        await bus.publish(commit("dev", 5))
        await wait_for_events(
            bus, lambda evs: any(e.type == "conveyor.apply.succeeded" for e in evs))
    finally:
        await c.stop()
    assert attempts == [1, 2]
