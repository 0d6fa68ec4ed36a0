"""Every input ends in exactly one outcome, whichever process dies at whichever step.

A "process" here is its own NATS connection bound to the durable consumer; killing it is
closing that connection with the message unacked, which is what the server sees of a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event, outcome_id
from orchestrator.runtime import Consumer, ConsumerSpec, Delivery, Outcome, Retry
from tests.support.waits import wait_for_events

FILTER = "conveyor.events.*.commit.detected"


def detected(n: int) -> Event:
    return new_event(ev.COMMIT_DETECTED, env="dev", correlation=f"sha{n}", key=str(n),
                     data={"n": n})


def spec(durable: str, handler: object, *, max_deliver: int) -> ConsumerSpec:
    return ConsumerSpec(durable=durable, stage="render", filters=[FILTER],
                        handler=handler, max_deliver=max_deliver, ack_wait=1.0,  # type: ignore[arg-type]
                        one_outcome=True)


async def take_and_die(nats: EmbeddedNats, durable: str, *, publish: Event | None = None) -> int:
    """A process that receives the message (and maybe publishes an outcome), then dies."""
    bus = await EventBus.connect(nats.url, name=f"dies-{durable}")
    try:
        sub = await bus.js.pull_subscribe_bind(durable=durable, stream=subjects.STREAM)
        msgs = await sub.fetch(1, timeout=30)
        if publish is not None:
            await bus.publish(publish)
        return int(msgs[0].metadata.num_delivered)
    finally:
        await bus.nc.close()  # no ack, no nak


async def test_a_process_killed_while_recording_a_dead_letter_leaves_it_to_the_next(
        nats_server: EmbeddedNats, bus: EventBus) -> None:
    entered = asyncio.Event()

    async def hangs(d: Delivery) -> Outcome:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    first_bus = await EventBus.connect(nats_server.url, name="first")
    first = Consumer(first_bus, spec("t-last", hangs, max_deliver=1))
    await first.start()
    original = detected(1)
    await bus.publish(original)
    await asyncio.wait_for(entered.wait(), 30)
    await first_bus.nc.close()  # killed while handling: delivery 1 had no outcome
    with contextlib.suppress(Exception):
        await first.stop(grace=0.0)
    # delivery 2 is the one that only records the dead letter: its process dies too
    assert await take_and_die(nats_server, "t-last") == 2

    async def never(d: Delivery) -> Outcome:
        raise AssertionError("a message past max_deliver is not handled again")

    terminated = await bus.nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{subjects.STREAM}.t-last")
    last = Consumer(bus, spec("t-last", never, max_deliver=1))
    await last.start()
    try:
        events = await wait_for_events(bus, lambda evs: any(
            e.type == "conveyor.render.dead" for e in evs))
        await terminated.next_msg(timeout=30)
    finally:
        await terminated.unsubscribe()
        await last.stop()
    dead = [e for e in events if e.type == "conveyor.render.dead"]
    assert len(dead) == 1 and dead[0].causationid == original.id
    assert dead[0].data["attempts"] >= 3


async def test_an_outcome_published_before_a_crash_is_the_only_one(
        nats_server: EmbeddedNats, bus: EventBus) -> None:
    original = detected(2)
    failed = new_event(ev.RENDER_FAILED, env="dev", cause=original,
                       data={"error": "envs/dev/app.yaml:3: bad indentation"})
    failed = Event.from_dict({**failed.to_dict(),
                              "id": outcome_id("render", "dev", original.id)})

    async def transient(d: Delivery) -> Outcome:  # the redelivery meets a transient error
        return Retry(0.05, reason="snapshot export: disk busy")

    consumer = Consumer(bus, spec("t-once", transient, max_deliver=2))
    await consumer.start()  # creates the durable; the first delivery goes to the dying one
    await consumer.stop()
    await bus.publish(original)
    # delivery 1: its process published render.failed and died before term()
    assert await take_and_die(nats_server, "t-once", publish=failed) == 1
    # the dead letter is dropped as a duplicate, so the log cannot say when it is over; the
    # server's advisory for the term() that follows it can
    terminated = await bus.nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{subjects.STREAM}.t-once")
    consumer = Consumer(bus, spec("t-once", transient, max_deliver=2))
    await consumer.start()
    try:
        await terminated.next_msg(timeout=30)
    finally:
        await terminated.unsubscribe()
        await consumer.stop()
    outcomes = [s.event async for s in bus.read(["conveyor.events.dev.render.>"])
                if s.event.causationid == original.id]
    assert [e.type for e in outcomes] == [ev.RENDER_FAILED]
