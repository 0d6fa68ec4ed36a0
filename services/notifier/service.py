"""notifier: tells people and systems about terminal outcomes, effectively once per route.

Routes come from the newest valid conveyor.yaml in the log (``config.loaded``). Before sending,
the delivery record ``(event id, route)`` is checked; it is written only after the provider
accepted the message, so a failed send is never counted as sent, and a redelivered event is
never posted twice.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import structlog

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import ConfigError, parse_config
from orchestrator.domain.events import Event, derive_id, new_event
from orchestrator.errors import PermanentError, TransientError
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Fail, Outcome, Retry
from orchestrator.settings import Settings
from services.notifier.send import send

log = structlog.get_logger(__name__)
SOURCE = "conveyor/notifier"
NOTIFY_ON = sorted(ev.TERMINAL_TYPES)


def delivery_key(event_id: str, route: str) -> str:
    return f"d.{event_id}.{derive_id(route)[:16]}"


class Notifier:
    def __init__(self, bus: EventBus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self._consumer: Consumer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._config_seq = -1
        self._routes: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        envs = self.settings.envs
        filters = [f for t in NOTIFY_ON for f in subjects.filter_for(t, (*envs, ev.NO_ENV)
                                                                     if envs else None)]
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable=subjects.consumer_name("notifier", envs), stage="notify", filters=filters,
            handler=self.handle, max_deliver=8, ack_wait=60.0, concurrency=8))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._session is not None:
            await self._session.close()

    async def routes(self) -> dict[str, dict[str, Any]]:
        """Notifier routes of the newest valid config in the log (cached by its sequence)."""
        last = await self.bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
        if last is None:
            return {}
        if last.seq != self._config_seq:
            try:
                config = parse_config(str(last.event.data.get("text", "")))
                self._routes = {k: dict(v) for k, v in config.notifiers.items()}
            except ConfigError:
                self._routes = {}
            self._config_seq = last.seq
        return self._routes

    async def handle(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        routes = await self.routes()
        emit: list[Event] = []
        retry_reason = ""
        for name, route in routes.items():
            if not _selected(route, event):
                continue
            key = delivery_key(event.id, name)
            if await self.bus.kv_get(subjects.DELIVERY_BUCKET, key) is not None:
                continue  # already delivered (a redelivery of the event)
            started = time.monotonic()
            assert self._session is not None
            try:
                answer = await send(self._session, route, event)
            except TransientError as exc:
                retry_reason = f"{name}: {exc}"
                continue
            except PermanentError as exc:
                emit.append(self._failed(event, name, route, str(exc), delivery.attempt))
                continue
            await self.bus.kv_put(subjects.DELIVERY_BUCKET, key,
                                  {"event": event.id, "route": name, "answer": answer})
            emit.append(new_event(ev.NOTIFY_SENT, env=event.subject, cause=event, source=SOURCE,
                                  key=name, data={"route": name, "provider": route.get("type"),
                                                  "for": event.type, "answer": answer,
                                                  "duration_ms": round(
                                                      (time.monotonic() - started) * 1000, 1)}))
        if retry_reason:
            if delivery.attempt >= 8 - 1:
                emit.append(self._failed(event, "*", {}, retry_reason, delivery.attempt))
                return Fail(emit)
            return Retry(min(60.0, 2.0 ** delivery.attempt), reason=retry_reason, emit=emit)
        return Ack(emit)

    def _failed(self, event: Event, name: str, route: dict[str, Any], error: str,
                attempt: int) -> Event:
        log.warning("notify.failed", route=name, error=error)
        return new_event(ev.NOTIFY_FAILED, env=event.subject, cause=event, source=SOURCE,
                         key=name, data={"route": name, "provider": route.get("type"),
                                         "for": event.type, "error": error, "attempts": attempt})


def _selected(route: dict[str, Any], event: Event) -> bool:
    envs = route.get("environments")
    if envs and event.subject not in envs and event.subject != ev.NO_ENV:
        return False
    types = route.get("events")
    if types:
        return any(event.type == t or event.type.startswith(str(t).rstrip("*").rstrip(".") + ".")
                   for t in types)
    return True
