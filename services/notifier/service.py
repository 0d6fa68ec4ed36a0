"""notifier: tells people and systems about outcomes, effectively once per event and route.

Routes come from the newest valid conveyor.yaml in the log (``config.loaded``). Before sending,
the delivery record ``(event id, route)`` in the deliveries bucket is checked; it says
``sent`` only after the provider accepted the message, so a failed send is never counted as
sent and a redelivered event is not posted again. A failed send is retried (inside ``deliver``
for quick blips, then by ``nak(delay)`` honouring Retry-After) until the budget is spent, then
it is ``notify.failed`` with the provider's answer (retryable with ``conveyor retry``).

Effectively once, not exactly once: a notifier killed after the provider accepted a message
but before its record said so sends it again (no HTTP effect and record can be one write; Argo
CD Notifications and Flux's notification-controller have the same window, or lose the message
instead). That second send is known: the record is first written as ``sending`` before the
request goes out, and a delivery that finds ``sending`` is a possible repeat. The generic
webhook then carries ``X-Conveyor-Redelivery: 1`` with the same CloudEvent ``id`` (same
``source`` and ``id`` is a duplicate, by the CloudEvents spec); editing providers edit the
deployment's message when an earlier event of it left a reference. A receiver never gets one
event under two ids.

One deployment (commit x environment) is one message where the provider can edit messages:
the message reference is kept per (route, environment, commit) and passed to the next send.

Rate-limited routes hold what exceeds the limit and later send one digest. Held events are
persisted in the bucket before the input is acked, so a crash does not lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import structlog

from orchestrator import subjects
from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import Event, derive_id, new_event
from orchestrator.domain.payloads import ConfigLoaded
from orchestrator.errors import ConveyorError
from orchestrator.notify import (
    Coalescer,
    RetryPolicy,
    Route,
    deliver,
    parse_routes,
    select_routes,
)
from orchestrator.resources import Resources
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Fail, Outcome, Retry

log = structlog.get_logger(__name__)
SOURCE = "conveyor/notifier"
NOTIFY_ON = tuple(sorted(ev.TERMINAL_TYPES | {ev.RENDER_SUCCEEDED, ev.COMMIT_DETECTED,
                                        ev.HEALTH_HEALTHY}))
ATTEMPTS = 6  # deliveries of one event before it is notify.failed
MAX_DELIVER = ATTEMPTS + 2
# Quick retries inside one handling only; a longer Retry-After goes back to JetStream as
# nak(delay) instead of sleeping while holding the message.
IN_HANDLER = RetryPolicy(attempts=2, initial=0.2, maximum=1.0, max_retry_after=1.0)


def _route_id(name: str) -> str:
    return derive_id(name)[:16]


def delivery_key(event_id: str, route: str) -> str:
    return f"d.{event_id}.{_route_id(route)}"


SENDING = "sending"  # a delivery record's state before the provider answered


def was_sent(record: Any) -> bool:
    """A delivery record that says the provider accepted the message (records written before
    the ``state`` field existed were all written after the send)."""
    return not (isinstance(record, dict) and record.get("state") == SENDING)


def delivered_as(event: Event) -> str:
    """The id a delivery is recorded under: a retried event (``conveyor retry``) counts as its
    original, so a retry re-sends only to the routes that never got it."""
    return decode(event).original_id or event.id


def ref_key(route: str, event: Event) -> str:
    return f"ref.{_route_id(route)}.{event.subject}.{event.correlationid or 'none'}"


def held_key(route: str) -> str:
    return f"held.{_route_id(route)}"


class Notifier:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.bus = resources.bus
        self.settings = resources.settings
        self._consumer: Consumer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._config_seq = -1
        self._routes: list[Route] = []
        self._coalescers: dict[str, Coalescer] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        envs = self.settings.envs
        filters = [f for t in NOTIFY_ON
                   for f in subjects.filter_for(t, (*envs, ev.NO_ENV) if envs else None)]
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable=subjects.consumer_name("notifier", envs), stage="notify", filters=filters,
            handler=self.handle, max_deliver=MAX_DELIVER, ack_wait=15.0, concurrency=8))
        await self._consumer.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="notifier:digests")

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        if self._session is not None:
            await self._session.close()

    async def routes(self) -> list[Route]:
        """Routes of the newest valid config in the log (re-parsed when it changes)."""
        last = await self.bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
        if last is None:
            return []
        if last.seq != self._config_seq:
            try:
                loaded = decode(last.event)
                config = parse_config(loaded.text if isinstance(loaded, ConfigLoaded) else "")
                self._routes = parse_routes(config.notifiers)
            except ConveyorError as exc:
                log.error("notify.bad_routes", error=str(exc))
                self._routes = []
            self._config_seq = last.seq
            for route in self._routes:
                if route.rate_limit is not None and route.name not in self._coalescers:
                    self._coalescers[route.name] = Coalescer.for_limit(route.rate_limit)
                    await self._restore_held(route.name)
        return self._routes

    async def handle(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        emit: list[Event] = []
        retry_after: float | None = None
        retry_reason = ""
        for route in select_routes(await self.routes(), event):
            if event.subject != ev.NO_ENV and self.settings.envs \
                    and event.subject not in self.settings.envs:
                continue
            record = await self.bus.kv_get(subjects.DELIVERY_BUCKET,
                                           delivery_key(delivered_as(event), route.name))
            if record is not None and was_sent(record[0]):
                continue  # already delivered: this is a redelivery
            coalescer = self._coalescers.get(route.name)
            if coalescer is not None and not coalescer.offer(event, time.monotonic()):
                await self._persist_held(route.name, coalescer)
                self._wake.set()
                continue
            outcome = await self._send(route, event, delivery.attempt,
                                       resent=record is not None)
            if isinstance(outcome, Event):
                emit.append(outcome)
            else:
                retry_reason = f"{route.name}: {outcome[0]}"
                retry_after = max(retry_after or 0.0, outcome[1] or 0.0) or None
        if retry_reason:
            if delivery.attempt >= ATTEMPTS:
                emit.append(self._failed(event, "*", None, retry_reason, delivery.attempt))
                return Fail(emit)
            delay = retry_after if retry_after is not None else min(60.0, 2.0 ** delivery.attempt)
            return Retry(delay, reason=retry_reason, emit=emit)
        return Ack(emit)

    async def _send(self, route: Route, event: Event, attempt: int, *,
                    resent: bool = False) -> Event | tuple[str, float | None]:
        """Deliver once (with quick retries inside); an event, or (reason, delay) to retry.

        ``resent``: an earlier attempt began (its record says ``sending``) and may have reached
        the provider; otherwise the record is written as ``sending`` before the request."""
        assert self._session is not None
        key = delivery_key(delivered_as(event), route.name)
        if resent:
            log.info("notify.resending", route=route.name, event_id=event.id,
                     reason="an earlier attempt was cut short before its answer was recorded")
        else:
            await self.bus.kv_put(subjects.DELIVERY_BUCKET, key,
                                  {"event": event.id, "route": route.name, "state": SENDING})
        rkey = ref_key(route.name, event)
        found = await self.bus.kv_get(subjects.DELIVERY_BUCKET, rkey)
        previous = str(found[0]) if found else None
        started = time.monotonic()
        result = await deliver(route, event, self._session, previous_ref=previous,
                               policy=IN_HANDLER, scope=self.settings.secrets.scope(),
                               redelivery=resent)
        if result.ok:
            await self.bus.kv_put(subjects.DELIVERY_BUCKET, key,
                                  {"event": event.id, "route": route.name, "state": "sent",
                                   "answer": result.provider_answer[:200]})
            log.info("notify.recorded", route=route.name, event_id=event.id)
            if result.message_ref and result.message_ref != previous:
                await self.bus.kv_put(subjects.DELIVERY_BUCKET, rkey, result.message_ref)
            data: dict[str, Any] = {
                "route": route.name, "provider": route.type, "for": event.type,
                "answer": result.provider_answer[:200], "attempts": result.attempts,
                "updated": bool(previous and result.message_ref == previous),
                "duration_ms": round((time.monotonic() - started) * 1000, 1)}
            if result.template_error:
                data["template_error"] = result.template_error
            return new_event(ev.NOTIFY_SENT, env=event.subject, cause=event, source=SOURCE,
                             key=route.name, data=data)
        if result.retryable:
            return (result.provider_answer, result.retry_after)
        return self._failed(event, route.name, route, result.provider_answer, attempt)

    def _failed(self, event: Event, name: str, route: Route | None, error: str,
                attempt: int) -> Event:
        log.warning("notify.failed", route=name, error=error)
        return new_event(ev.NOTIFY_FAILED, env=event.subject, cause=event, source=SOURCE,
                         key=name, data={"route": name,
                                         "provider": route.type if route else None,
                                         "for": event.type, "error": error, "attempts": attempt})

    # -- digests of rate-limited routes ----------------------------------------------------------
    async def _persist_held(self, route: str, coalescer: Coalescer) -> None:
        await self.bus.kv_put(subjects.DELIVERY_BUCKET, held_key(route),
                              [e.to_dict() for e in coalescer.pending])

    async def _restore_held(self, route: str) -> None:
        found = await self.bus.kv_get(subjects.DELIVERY_BUCKET, held_key(route))
        if found and found[0]:
            self._coalescers[route].pending = [Event.from_dict(raw) for raw in found[0]]
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            now = time.monotonic()
            waits = [c.next_flush_at(now) for c in self._coalescers.values()]
            due = [w for w in waits if w is not None]
            timeout = max(0.0, min(due) - now) if due else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel (3.11)
                    await self._wake.wait()
            for route in list(self._routes):
                coalescer = self._coalescers.get(route.name)
                if coalescer is None:
                    continue
                digest = coalescer.flush(time.monotonic())
                if digest is None:
                    continue
                try:
                    await self._deliver_digest(route, digest, coalescer)
                except Exception as exc:  # keep the loop alive; the digest is re-held
                    log.warning("notify.digest_failed", route=route.name, error=str(exc))

    async def _deliver_digest(self, route: Route, digest: Event, coalescer: Coalescer) -> None:
        record = await self.bus.kv_get(subjects.DELIVERY_BUCKET,
                                       delivery_key(delivered_as(digest), route.name))
        if record is None or not was_sent(record[0]):
            outcome = await self._send(route, digest, 1, resent=record is not None)
            if not isinstance(outcome, Event):
                # keep it for the next flush: nothing held is dropped
                log.warning("notify.digest_retry", route=route.name, reason=outcome[0])
                coalescer.pending.insert(0, digest)
                await self._persist_held(route.name, coalescer)
                return
            await self.bus.publish(outcome)
        await self._persist_held(route.name, coalescer)
