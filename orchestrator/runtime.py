"""The service runner: consume a durable pull consumer, dispatch, and ack/nak/term.

A handler never touches the message. It gets a ``Delivery`` and returns an ``Outcome``:

- ``Ack(emit)``: done; publish ``emit`` then ack.
- ``Retry(delay, emit)``: try again later; publish ``emit`` then ``nak(delay)``. Once the
  consumer's ``max_deliver`` is reached the runner turns it into ``conveyor.<stage>.dead``
  (carrying the reason and the original event) and ``term()``s: no message disappears silently.
- ``Fail(emit)``: final; publish ``emit`` (a ``*.failed`` event) then ``term()``.

Events are published *before* the ack. A crash in between redelivers the input; the handler runs
again and re-emits the same deterministic ids, which JetStream drops: at-least-once delivery with
exactly-once events.

Messages are dispatched to one sequential lane per key (the environment): environments proceed
in parallel, one environment's messages in stream order. A lane may ``coalesce``: when several
messages wait, all but the newest are handed to ``supersede`` (the applier's "newest commit wins").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import nats
import structlog
from nats.aio.msg import Msg
from nats.js import api as jsapi

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import Event, new_event
from orchestrator.errors import PermanentError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    seq: int  # stream sequence of this event
    attempt: int  # 1 on first delivery


@dataclass(frozen=True, slots=True)
class Ack:
    emit: Sequence[Event] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    reason: str
    emit: Sequence[Event] = ()


@dataclass(frozen=True, slots=True)
class Fail:
    emit: Sequence[Event] = ()


Outcome = Ack | Retry | Fail
Handler = Callable[[Delivery], Awaitable[Outcome]]
Superseder = Callable[[Delivery, Delivery], Awaitable[Sequence[Event]]]


@dataclass
class ConsumerSpec:
    """A durable consumer and how to run it."""

    durable: str
    stage: str  # the stage this consumer performs: render, apply, notify, source
    filters: list[str]
    handler: Handler
    max_deliver: int = 10
    ack_wait: float = 60.0
    max_ack_pending: int = 1000
    concurrency: int = 8  # lanes running at once
    supersede: Superseder | None = None
    key: Callable[[Event], str] = field(default=lambda e: e.subject)


@dataclass
class _Item:
    msg: Msg
    delivery: Delivery


class _Lane:
    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Consumer:
    """Runs one ConsumerSpec until stopped."""

    def __init__(self, bus: EventBus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._lanes: dict[str, _Lane] = {}
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        spec = self.spec
        config = jsapi.ConsumerConfig(
            durable_name=spec.durable, name=spec.durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT, deliver_policy=jsapi.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait, max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_ack_pending,
            filter_subjects=spec.filters if len(spec.filters) > 1 else None,
            filter_subject=spec.filters[0] if len(spec.filters) == 1 else None,
        )
        # add_consumer reconciles mutable fields of an existing durable (binding alone would
        # silently keep the old config).
        await self.bus.js.add_consumer(subjects.STREAM, config)
        self._sub = await self.bus.js.pull_subscribe_bind(
            durable=spec.durable, stream=subjects.STREAM)
        self._task = asyncio.create_task(self._pull_loop(), name=f"consumer:{spec.durable}")

    async def _pull_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(64, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.ConnectionClosedError, asyncio.CancelledError):
                return
            except Exception as exc:  # reconnecting server, consumer recreated...
                log.warning("consumer.fetch_failed", consumer=self.spec.durable, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                continue
            for msg in msgs:
                self._dispatch(msg)

    def _dispatch(self, msg: Msg) -> None:
        try:
            event = Event.from_json(msg.data)
        except Exception as exc:
            log.error("consumer.malformed", consumer=self.spec.durable, subject=msg.subject,
                      error=str(exc))
            asyncio.create_task(msg.term())
            return
        meta = msg.metadata
        item = _Item(msg, Delivery(event, meta.sequence.stream, meta.num_delivered))
        key = self.spec.key(event)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.items.append(item)
        self._inflight += 1
        self._idle.clear()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run_lane(key, lane))

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        async with self._slots:
            while lane.items:
                if self.spec.supersede is not None and len(lane.items) > 1:
                    older, lane.items = lane.items[:-1], lane.items[-1:]
                    newest = lane.items[0]
                    for item in older:
                        await self._finish(item, Ack(await self.spec.supersede(
                            item.delivery, newest.delivery)))
                item = lane.items.pop(0)
                if self._stopping.is_set():
                    await self._release(item, nak=True)
                    continue
                outcome = await self._handle(item)
                await self._finish(item, outcome)

    async def _handle(self, item: _Item) -> Outcome:
        bound = log.bind(consumer=self.spec.durable, env=item.delivery.event.subject,
                         event_id=item.delivery.event.id, type=item.delivery.event.type,
                         revision=item.delivery.event.correlationid[:12])
        progress = asyncio.create_task(self._keep_alive(item.msg))
        try:
            return await self.spec.handler(item.delivery)
        except PermanentError as exc:
            bound.error("handler.permanent_error", error=str(exc))
            return Fail(())
        except Exception as exc:
            bound.exception("handler.crashed", error=str(exc))
            return Retry(min(60.0, 2.0 ** item.delivery.attempt), reason=f"handler error: {exc}")
        finally:
            progress.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell the server we are still working, so a long apply is not redelivered meanwhile."""
        while True:
            await asyncio.sleep(self.spec.ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _finish(self, item: _Item, outcome: Outcome) -> None:
        delivery = item.delivery
        if isinstance(outcome, Retry) and delivery.attempt >= self.spec.max_deliver:
            dead = new_event(
                f"conveyor.{self.spec.stage}.dead", env=delivery.event.subject, cause=delivery.event,
                data={"reason": outcome.reason, "attempts": delivery.attempt,
                      "original": delivery.event.to_dict(), "consumer": self.spec.durable},
            )
            outcome = Fail((*outcome.emit, dead))
        try:
            await self.bus.publish_all(list(outcome.emit))
        except Exception as exc:
            log.warning("consumer.publish_failed", consumer=self.spec.durable, error=str(exc))
            await self._release(item, nak=True, delay=1.0)
            return
        try:
            match outcome:
                case Ack():
                    await item.msg.ack()
                case Retry(delay=delay):
                    await item.msg.nak(delay=delay)
                case Fail():
                    await item.msg.term()
        except Exception as exc:  # the message will be redelivered; handlers are idempotent
            log.warning("consumer.ack_failed", consumer=self.spec.durable, error=str(exc))
        self._done()

    async def _release(self, item: _Item, *, nak: bool, delay: float | None = None) -> None:
        if nak:
            with contextlib.suppress(Exception):
                await item.msg.nak(delay=delay)
        self._done()

    def _done(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop pulling; let handlers finish within ``grace``; nak what is still queued."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()  # an idle fetch would otherwise hold us for its timeout
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for lane in self._lanes.values():
            if lane.task is not None and not lane.task.done():
                lane.task.cancel()
            for item in lane.items:
                with contextlib.suppress(Exception):
                    await item.msg.nak()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
