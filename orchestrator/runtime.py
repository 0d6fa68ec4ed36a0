"""The service runner: consume a durable pull consumer, dispatch, and ack/nak/term.

(Over 400 lines on purpose: the pull loop, the lanes and the finish are one state machine whose
crash reasoning below is a third of the file; what a handler returns and the error mapping
live in ``orchestrator/outcome.py``.)

A handler never touches the message. It gets a ``Delivery`` and returns an ``Outcome``:

- ``Ack(emit)``: done; publish ``emit`` then ack.
- ``Retry(delay, reason, emit)``: try again later; publish ``emit`` then ``nak(delay)``.
- ``Fail(emit)``: final; publish ``emit`` (a ``*.failed`` event) then ``term()``.

Events are published *before* the ack. A crash in between redelivers the input; the handler runs
again and re-emits the same deterministic ids, which JetStream drops: at-least-once delivery with
exactly-once events. With ``one_outcome`` (the renderer, the applier) every outcome of one input,
the runtime's own ``dead`` included, carries one id (``events.outcome_id``): when a crash lets an
input be handled twice and the second handling ends differently (superseded after succeeded,
dead after failed), JetStream keeps the first and the input still has exactly one outcome.

Why a crash between any two steps loses nothing, stage by stage (each input is acked only after
everything it caused is in the log, and everything it caused has an id derived from it):

- watcher: events published, *then* the cursor (``services/git_watcher/poller.py``). Killed in
  between: the next poll re-announces from the old cursor with the same ids, dropped as
  duplicates (inside the stream's duplicate window; beyond it the first batch after a start
  is checked against the last message of each subject and only the rest is published); the
  cursor never passes a commit whose events are not in the log.
- renderer / applier: the outcome is published, *then* the input is acked (``_finish`` below).
  Killed in between, or before publishing: the input is still pending on the server and is
  redelivered after ``ack_wait``; its outcome is re-emitted with the same id. Killed after the
  ack: the outcome is already in the log. A newer input overtaking the redelivered one is fine:
  the older one is then ``superseded`` (by the lane, or by the target's ``origin_seq``).
- projector: records, then ``position``, then the ack (``orchestrator/projector.py``); a
  half-written event is completed at start before anything reads the projection.

No message disappears without an event saying why. A handler's exception becomes an outcome
in one place (``outcome_for_error`` in ``orchestrator/outcome.py``), and every final outcome is
checked here to carry an event:

- a handler that raises ``PermanentError`` (``ConfigError``, ``ManifestError``...) ends the
  message as ``conveyor.<stage>.dead`` with the error's reason code and words and the original
  event (so ``conveyor retry`` can hand it back once a person fixed the cause);
- ``TransientError`` is ``Retry`` after its ``delay`` (else exponential backoff), any other
  exception ``Retry`` with backoff: a bug may be a passing one, and ``max_deliver`` bounds it;
- a ``Fail`` without events (a handler that gave up silently) gets a ``conveyor.<stage>.dead``;
- a handler that returns ``Retry`` on its ``max_deliver``-th delivery becomes
  ``conveyor.<stage>.dead`` (the reason and the original event) and is ``term()``\\ ed;
- a message that comes back after ``max_deliver`` deliveries never got an outcome (its process
  died or hung each time), and is turned into ``conveyor.<stage>.dead`` without running the
  handler again. The server itself never gives up on a message (its ``max_deliver`` is
  unlimited): had it a limit, a process killed while recording that dead letter would leave
  the message with no outcome at all, redelivered to nobody;
- a message that is not a valid event is ``term()``\\ ed with a ``conveyor.<stage>.dead`` event
  carrying the stream sequence, the subject, the parse error and the raw payload.

Liveness: every message this process holds (queued in a lane or being handled) is kept alive
with ``in_progress()`` every ``ack_wait / 3``. ``ack_wait`` is therefore not a limit on how long
a handler may take, only how long after its process died a held message is redelivered.

Lanes: messages are dispatched to one sequential lane per key (the environment): environments
proceed in parallel, one environment's messages one at a time. A consumer with ``supersede``
("newest wins", the applier) orders a lane by ``order(delivery)`` (the commit's sequence, not
the arrival order, which a redelivery can change) and only ever runs the newest waiting item:

- items queued behind the running one that are older than the newest are handed to
  ``supersede`` and acked with its events;
- an item that returned ``Retry`` is ``nak(delay)``\\ ed and *parked*: the lane remembers it
  until it is redelivered. When a newer item for the lane arrives meanwhile, the parked one is
  cancelled at once (its ``supersede`` events published, then ``term()``): a newer commit does
  not wait for an older commit's backoff to run out. If the older message is redelivered at the
  same moment, the handler sees it again and decides from the target (it is superseded there);
  the superseded event has the same id either way, so the log records it once.
- a redelivery of a message the lane already holds (same stream sequence) replaces the held
  handle instead of queueing a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import nats
import structlog
from nats.aio.msg import Msg
from nats.js import api as jsapi

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import NO_ENV, Event, derive_id, outcome_id, schema_for
from orchestrator.errors import PermanentError, TransientError
from orchestrator.outcome import (
    RUNTIME_SOURCE,
    SILENT_FAIL,
    Ack,
    Delivery,
    Fail,
    Handler,
    Outcome,
    Retry,
    Superseder,
    backoff,
    dead_event,
    outcome_for_error,
)

log = structlog.get_logger(__name__)

MALFORMED_PAYLOAD_KEPT = 4096  # bytes of an unparseable payload copied into its dead event

__all__ = ["RUNTIME_SOURCE", "SILENT_FAIL", "Ack", "Consumer", "ConsumerSpec", "Delivery", "Fail",
           "Handler", "Outcome", "Retry", "Superseder", "backoff", "dead_event",
           "outcome_for_error"]


def _by_seq(delivery: Delivery) -> int:
    return delivery.seq


@dataclass
class ConsumerSpec:
    """A durable consumer and how to run it."""

    durable: str
    stage: str  # the stage this consumer performs: render, apply, notify, source
    filters: list[str]
    handler: Handler
    max_deliver: int = 10  # handler runs at most this often per message, then ``.dead``
    ack_wait: float = 30.0  # redelivery delay after the holding process died (see module doc)
    max_ack_pending: int = 1000
    concurrency: int = 8  # lanes running at once
    supersede: Superseder | None = None
    key: Callable[[Event], str] = field(default=lambda e: e.subject)
    order: Callable[[Delivery], int] = _by_seq  # "newer" within a lane (supersede only)
    one_outcome: bool = False  # the dead event shares the stage's outcome id (module doc)
    # where a durable created now starts (0: the stream's first event); an existing durable
    # keeps its own start (the server refuses to change it) and resumes at its ack floor
    start_seq: int = 0


@dataclass
class _Item:
    msg: Msg
    delivery: Delivery
    parked: bool = False  # nak'ed with a delay; nats-py refuses a second ack on its handle


class _Lane:
    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.current: _Item | None = None
        self.parked: dict[int, _Item] = {}  # nak'ed with a delay, by stream sequence
        self.task: asyncio.Task[None] | None = None


class Consumer:
    """Runs one ConsumerSpec until stopped."""

    def __init__(self, bus: EventBus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._lanes: dict[str, _Lane] = {}
        self._held: dict[int, _Item] = {}  # queued or being handled, by stream sequence
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._alive: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def _start_at(self) -> tuple[jsapi.DeliverPolicy, int | None]:
        if self.spec.start_seq <= 1:
            return jsapi.DeliverPolicy.ALL, None
        try:
            info = await self.bus.js.consumer_info(subjects.STREAM, self.spec.durable)
        except nats.js.errors.NotFoundError:
            return jsapi.DeliverPolicy.BY_START_SEQUENCE, self.spec.start_seq
        return (info.config.deliver_policy or jsapi.DeliverPolicy.ALL,
                info.config.opt_start_seq)

    async def start(self) -> None:
        spec = self.spec
        policy, start_seq = await self._start_at()
        config = jsapi.ConsumerConfig(
            durable_name=spec.durable, name=spec.durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT, deliver_policy=policy, opt_start_seq=start_seq,
            # unlimited on the server: the runtime ends a message (``.dead``) after
            # ``max_deliver`` deliveries, and a crash while it does so must redeliver it again
            ack_wait=spec.ack_wait, max_deliver=-1,
            max_ack_pending=spec.max_ack_pending,
            filter_subjects=spec.filters if len(spec.filters) > 1 else None,
            filter_subject=spec.filters[0] if len(spec.filters) == 1 else None,
        )
        # add_consumer reconciles mutable fields of an existing durable (binding alone would
        # silently keep the old config).
        await self.bus.js.add_consumer(subjects.STREAM, config)
        self.bus.durables.add(spec.durable)
        self._sub = await self.bus.js.pull_subscribe_bind(
            durable=spec.durable, stream=subjects.STREAM)
        self._task = asyncio.create_task(self._pull_loop(), name=f"consumer:{spec.durable}")
        self._alive = asyncio.create_task(self._keep_alive(), name=f"alive:{spec.durable}")

    async def _pull_loop(self) -> None:
        # never ask for more than the server may hand out: fetch would wait for the rest
        batch = max(1, min(64, self.spec.max_ack_pending))
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(batch, timeout=1.0)
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own under load
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

    # -- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        try:
            event = Event.from_json(msg.data)
        except Exception as exc:
            self._busy()
            self._spawn(self._malformed(msg, seq, exc))
            return
        delivery = Delivery(event, seq, meta.num_delivered)
        if delivery.attempt > 1:  # counted by the crash suite; rare outside crashes
            log.info("consumer.redelivered", consumer=self.spec.durable, seq=seq,
                     attempt=delivery.attempt)
        held = self._held.get(seq)
        if held is not None:  # redelivered while we hold it: answer on the newest handle
            held.msg = msg
            held.delivery = delivery
            return
        item = _Item(msg, delivery)
        key = self.spec.key(event)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.parked.pop(seq, None)  # a parked message is back: it is queued again below
        if self.spec.supersede is not None:
            self._cancel_parked(lane, item)
        lane.items.append(item)
        self._held[seq] = item
        self._busy()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run_lane(lane))

    def _cancel_parked(self, lane: _Lane, newest: _Item) -> None:
        """A newer item arrived: parked (backing-off) older items of the lane end now."""
        order = self.spec.order
        for seq, parked in list(lane.parked.items()):
            if order(parked.delivery) < order(newest.delivery):
                del lane.parked[seq]
                self._busy()
                self._spawn(self._supersede(parked, newest, term=True))

    async def _supersede(self, older: _Item, newest: _Item, *, term: bool) -> None:
        assert self.spec.supersede is not None
        emit = await self.spec.supersede(older.delivery, newest.delivery)
        log.info("consumer.superseded", consumer=self.spec.durable, seq=older.delivery.seq,
                 by=newest.delivery.seq, parked=term)
        await self._finish(older, Fail(emit) if term else Ack(emit))

    async def _run_lane(self, lane: _Lane) -> None:
        async with self._slots:
            while lane.items:
                if self.spec.supersede is not None:
                    order = self.spec.order
                    newest = max(lane.items, key=lambda i: order(i.delivery))
                    older = [i for i in lane.items if i is not newest]
                    lane.items = [newest]
                    for item in older:
                        await self._supersede(item, newest, term=False)
                item = lane.items.pop(0)
                if self._stopping.is_set():
                    await self._release(item, nak=True)
                    continue
                lane.current = item
                try:
                    outcome = await self._handle(item)
                    await self._finish(item, outcome, lane)
                finally:
                    lane.current = None

    async def _handle(self, item: _Item) -> Outcome:
        delivery = item.delivery
        if delivery.attempt > self.spec.max_deliver:
            return Retry(0.0, reason=(
                f"no outcome after {self.spec.max_deliver} deliveries: the process handling it "
                "died or stopped answering each time"))
        bound = log.bind(consumer=self.spec.durable, env=delivery.event.subject,
                         event_id=delivery.event.id, type=delivery.event.type,
                         revision=delivery.event.correlationid[:12])
        try:
            return await self.spec.handler(delivery)
        except PermanentError as exc:
            bound.error("handler.permanent_error", reason=exc.reason, error=str(exc))
            return outcome_for_error(exc, delivery, stage=self.spec.stage,
                                     consumer=self.spec.durable)
        except Exception as exc:
            if isinstance(exc, TransientError):
                bound.warning("handler.transient_error", reason=exc.reason, error=str(exc))
            else:
                bound.exception("handler.crashed", error=str(exc))
            return outcome_for_error(exc, delivery, stage=self.spec.stage,
                                     consumer=self.spec.durable)

    async def _keep_alive(self) -> None:
        """Tell the server every held message is still being worked on (queued ones too)."""
        while True:
            await asyncio.sleep(self.spec.ack_wait / 3)
            for item in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await item.msg.in_progress()

    # -- outcomes ---------------------------------------------------------------------------
    async def _finish(self, item: _Item, outcome: Outcome, lane: _Lane | None = None) -> None:
        delivery = item.delivery
        if isinstance(outcome, Retry) and delivery.attempt >= self.spec.max_deliver:
            dead = dead_event(self.spec.stage, self.spec.durable, delivery, outcome.reason,
                              code="Exhausted")
            log.error("consumer.dead", consumer=self.spec.durable, seq=delivery.seq,
                      reason=outcome.reason)
            outcome = Fail((*outcome.emit, dead))
        elif isinstance(outcome, Fail) and not outcome.emit:  # no silent term
            log.error("consumer.dead", consumer=self.spec.durable, seq=delivery.seq,
                      reason=SILENT_FAIL)
            outcome = Fail((dead_event(self.spec.stage, self.spec.durable, delivery,
                                       SILENT_FAIL, code="SilentFail"),))
        if self.spec.one_outcome:
            outcome = replace(outcome, emit=[self._one_outcome(e, delivery)
                                             for e in outcome.emit])
        # Publish, then ack (the ordering argument is in the module docstring): killed before
        # the ack, the input comes back and its events are re-emitted with the same ids.
        try:
            published = await self.bus.publish_all(list(outcome.emit))
        except Exception as exc:
            log.warning("consumer.publish_failed", consumer=self.spec.durable, error=str(exc))
            await self._release(item, nak=True, delay=1.0)
            return
        dropped = sum(p.duplicate for p in published)
        if dropped:  # re-emitted after a crash or redelivery: the server kept the first copy
            log.info("consumer.duplicates_dropped", consumer=self.spec.durable, count=dropped)
        try:
            match outcome:
                case Ack():
                    await item.msg.ack()
                case Retry(delay=delay):
                    await item.msg.nak(delay=delay)
                case Fail() if item.parked:  # JetStream's ack protocol, straight to the reply
                    await self.bus.nc.publish(item.msg.reply, b"+TERM")
                case Fail():
                    await item.msg.term()
        except Exception as exc:  # the message will be redelivered; handlers are idempotent
            log.warning("consumer.ack_failed", consumer=self.spec.durable, error=str(exc))
        if isinstance(outcome, Retry) and lane is not None and self.spec.supersede is not None:
            self._held.pop(delivery.seq, None)
            item.parked = True
            lane.parked[delivery.seq] = item
            newer = [i for i in lane.items
                     if self.spec.order(i.delivery) > self.spec.order(delivery)]
            if newer:  # a newer item arrived while this one ran: no point waiting the delay
                self._cancel_parked(lane, max(newer, key=lambda i: self.spec.order(i.delivery)))
        self._done(item)

    def _one_outcome(self, event: Event, delivery: Delivery) -> Event:
        """This stage's ``dead`` for the input shares the id of the handler's outcomes."""
        if event.type == f"conveyor.{self.spec.stage}.dead" \
                and event.causationid == delivery.event.id:
            return replace(event, id=outcome_id(self.spec.stage, event.subject,
                                                delivery.event.id))
        return event

    async def _malformed(self, msg: Msg, seq: int, error: Exception) -> None:
        """A message that is not an event: term it, and say so in the log."""
        parts = msg.subject.split(".")
        env = parts[2] if len(parts) > 2 and subjects.valid_env_name(parts[2]) else NO_ENV
        reason = (f"stream message {seq} on {msg.subject} is not a valid event ({error}); "
                  "it was set aside without being handled")
        log.error("consumer.malformed", consumer=self.spec.durable, subject=msg.subject, seq=seq,
                  error=str(error))
        dead = Event(
            type=f"conveyor.{self.spec.stage}.dead", subject=env, source=RUNTIME_SOURCE,
            id=derive_id("malformed", self.spec.durable, str(seq)),
            dataschema=schema_for(f"conveyor.{self.spec.stage}.dead"),
            data={"reason": reason, "code": "Malformed", "malformed": True,
                  "consumer": self.spec.durable,
                  "stream_seq": seq, "nats_subject": msg.subject,
                  "payload": bytes(msg.data[:MALFORMED_PAYLOAD_KEPT]).decode(errors="replace")},
        )
        try:
            await self.bus.publish(dead)
        except Exception as exc:
            log.warning("consumer.publish_failed", consumer=self.spec.durable, error=str(exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        else:
            with contextlib.suppress(Exception):
                await msg.term()
        finally:
            self._done(None)

    async def _release(self, item: _Item, *, nak: bool, delay: float | None = None) -> None:
        if nak:
            with contextlib.suppress(Exception):
                await item.msg.nak(delay=delay)
        self._done(item)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    def _busy(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _done(self, item: _Item | None) -> None:
        if item is not None and self._held.get(item.delivery.seq) is item:
            del self._held[item.delivery.seq]
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    # -- lifecycle --------------------------------------------------------------------------
    async def stop(self, grace: float = 8.0) -> None:
        """Stop pulling; let the running handlers finish within ``grace``; nak everything else.

        Queued items are nak'ed at once (without delay: another process takes them now); an item
        whose handler is still running after ``grace`` is nak'ed too. Parked items are left to
        the server, which redelivers them when their delay ends.
        """
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()  # an idle fetch would otherwise hold us for its timeout
            with contextlib.suppress(BaseException):
                await self._task
        for lane in self._lanes.values():
            queued, lane.items = lane.items, []
            for item in queued:
                await self._release(item, nak=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for lane in self._lanes.values():
            if lane.task is not None and not lane.task.done():
                lane.task.cancel()
            if lane.current is not None:
                log.warning("consumer.stop_abandoned", consumer=self.spec.durable,
                            seq=lane.current.delivery.seq)
                with contextlib.suppress(Exception):
                    await lane.current.msg.nak()
        for task in (self._alive, *self._side):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
