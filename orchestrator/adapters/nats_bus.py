"""The event bus: JetStream stream, KV buckets and object store behind one small class.

Everything Conveyor says goes through ``publish``: one event, one message on
``conveyor.events.<env>.<stage>.<outcome>``, with ``Nats-Msg-Id`` = the event id so a retried
or re-emitted publish is dropped by the server. Publish retries (tenacity) stay inside this
adapter and reuse the same id, which is what makes them safe.

Connection settings follow the field notes: reconnect forever (a service outlives a server
restart), unsubscribe before drain on shutdown, and reconcile consumer config with
``add_consumer`` at start-up because binding an existing durable ignores the config given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from orchestrator import subjects
from orchestrator.domain.events import Event, fit
from orchestrator.errors import ConflictError, TransientError

log = structlog.get_logger(__name__)

# Publishes must finish inside the duplicate window for the server to drop a retried one.
DUPLICATE_WINDOW = 30 * 60.0
PUBLISH_RETRY_FOR = 30.0
PAYLOAD_HEADROOM = 8192  # subject, Nats-Msg-Id and protocol overhead

PublishObserver = Callable[[Event, bool], None]
"""Told of every acknowledged publish (the event, whether the server dropped it as a duplicate):
how the metrics count events without the bus knowing about them."""


@dataclass(frozen=True, slots=True)
class Retention:
    """Stream retention: 0 means unlimited (the default: the log is the system of record)."""

    max_age: float = 0.0
    max_bytes: int = -1


@dataclass(frozen=True, slots=True)
class Published:
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: Event


class EventBus:
    """A connection to NATS with Conveyor's stream, buckets and store ensured."""

    def __init__(self, nc: Client, js: JetStreamContext, *,
                 on_published: PublishObserver | None = None) -> None:
        self.nc = nc
        self.js = js
        self.on_published = on_published
        self._kv: dict[str, KeyValue] = {}
        self._obj: ObjectStore | None = None
        self._closing: list[bool] = []

    @classmethod
    async def connect(cls, url: str, *, name: str = "conveyor",
                      retention: Retention | None = None,
                      on_published: PublishObserver | None = None) -> EventBus:
        async def on_error(exc: Exception) -> None:
            log.warning("nats.error", error=str(exc))

        closing: list[bool] = []

        async def on_disconnect() -> None:
            if not closing:  # our own close() is not news
                log.warning("nats.disconnected")

        async def on_reconnect() -> None:
            log.info("nats.reconnected")

        try:
            nc = await nats.connect(
                url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                connect_timeout=5, allow_reconnect=True, error_cb=on_error,
                disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
            )
        except Exception as exc:
            raise TransientError(f"cannot connect to NATS at {url}: {exc}",
                                 reason="NatsUnreachable") from exc
        bus = cls(nc, nc.jetstream(timeout=10), on_published=on_published)
        bus._closing = closing
        await bus.ensure_schema(retention)
        return bus

    async def ensure_schema(self, retention: Retention | None) -> None:
        """Create the stream, buckets and store if missing.

        ``retention`` None keeps an existing stream's limits (unlimited when creating it);
        otherwise the stream is updated to it.
        """
        if retention is None:
            try:
                await self.js.stream_info(subjects.STREAM)
                exists = True
            except NotFoundError:
                exists = False
        await self._ensure_stream(retention or Retention(), update=retention is not None
                                  or not exists)
        for bucket in (subjects.STATE_BUCKET, subjects.DELIVERY_BUCKET):
            self._kv[bucket] = await self.js.create_key_value(
                jsapi.KeyValueConfig(bucket=bucket, history=1,
                                     storage=jsapi.StorageType.FILE))
        self._obj = await self.js.create_object_store(
            subjects.BUNDLE_BUCKET, config=jsapi.ObjectStoreConfig(storage=jsapi.StorageType.FILE))

    async def _ensure_stream(self, retention: Retention, *, update: bool) -> None:
        if not update:
            return
        config = jsapi.StreamConfig(
            name=subjects.STREAM, subjects=[subjects.ALL_EVENTS],
            storage=jsapi.StorageType.FILE, retention=jsapi.RetentionPolicy.LIMITS,
            max_age=retention.max_age, max_bytes=retention.max_bytes,
            duplicate_window=DUPLICATE_WINDOW, allow_direct=True,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)  # retention changed since it was created

    # -- events ---------------------------------------------------------------------------------
    async def publish(self, event: Event) -> Published:
        subject = subjects.event_subject(event.subject, event.type)
        # what the server accepts (1 MiB by default), less room for the subject and headers:
        # an oversized event is cut to fit rather than stall its stage forever
        event = fit(event, max(4096, int(self.nc.max_payload or 1 << 20) - PAYLOAD_HEADROOM))
        payload = event.to_json()
        headers = {"Nats-Msg-Id": event.id}
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((nats.errors.TimeoutError,
                                           nats.js.errors.NoStreamResponseError,
                                           nats.errors.ConnectionClosedError,
                                           nats.errors.OutboundBufferLimitError)),
            wait=wait_exponential(multiplier=0.1, max=2), stop=stop_after_delay(PUBLISH_RETRY_FOR),
            reraise=True,
        ):
            with attempt:
                ack = await self.js.publish(subject, payload, headers=headers,
                                            stream=subjects.STREAM)
        if self.on_published is not None:
            self.on_published(event, bool(ack.duplicate))
        return Published(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_all(self, events: Sequence[Event]) -> list[Published]:
        return [await self.publish(e) for e in events]

    async def last_event(self, env: str, event_type: str) -> StoredEvent | None:
        subject = subjects.event_subject(env, event_type)
        try:
            raw = await self.js.get_last_msg(subjects.STREAM, subject, direct=True)
        except NotFoundError:
            return None
        assert raw.data is not None and raw.seq is not None
        return StoredEvent(raw.seq, Event.from_json(raw.data))

    async def get_event(self, seq: int) -> StoredEvent | None:
        try:
            raw = await self.js.get_msg(subjects.STREAM, seq=seq)
        except NotFoundError:
            return None
        assert raw.data is not None
        return StoredEvent(seq, Event.from_json(raw.data))

    async def last_seq(self) -> int:
        info = await self.js.stream_info(subjects.STREAM)
        return int(info.state.last_seq)

    async def read(self, filters: Sequence[str] | None = None, *, start_seq: int = 1,
                   stop_at_end: bool = True, batch: int = 500,
                   idle: float = 0.5) -> AsyncIterator[StoredEvent]:
        """Events in stream order via an ephemeral ordered consumer.

        With ``stop_at_end`` it stops at the stream's last sequence as of the call (a snapshot
        read, used by queries and replay); otherwise it follows the log for ever.
        """
        end = await self.last_seq() if stop_at_end else None
        if end is not None and end < start_seq:
            return
        fl = list(filters or [subjects.ALL_EVENTS])
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq),
            ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
            filter_subjects=fl if len(fl) > 1 else None,
            filter_subject=fl[0] if len(fl) == 1 else None,
        )
        sub = await self.js.pull_subscribe(fl[0], stream=subjects.STREAM, config=config)
        try:
            if end is not None and (await sub.consumer_info()).num_pending == 0:
                return
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=idle)
                except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own under load
                    continue  # following the log: nothing new yet
                for msg in msgs:
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if end is not None and seq > end:
                        return
                    yield StoredEvent(seq, Event.from_json(msg.data))
                    # num_pending counts matching messages after this one: 0 = end of snapshot
                    if end is not None and (seq >= end or meta.num_pending == 0):
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def consumer_pending(self) -> dict[str, int]:
        """Messages each durable consumer of the stream has still to finish (pending plus
        awaiting ack); ephemeral readers are not queues and are left out."""
        infos = await self.js.consumers_info(subjects.STREAM)
        return {
            str(info.config.durable_name): int(info.num_pending or 0)
            + int(info.num_ack_pending or 0)
            for info in infos if info.config.durable_name
        }

    # -- key/value ------------------------------------------------------------------------------
    def kv(self, bucket: str) -> KeyValue:
        return self._kv[bucket]

    async def kv_get(self, bucket: str, key: str) -> tuple[Any, int] | None:
        try:
            entry = await self._kv[bucket].get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None:
            return None
        return json.loads(entry.value), int(entry.revision or 0)

    async def kv_put(self, bucket: str, key: str, value: Any, *,
                     expect_revision: int | None = None) -> int:
        """Put a JSON value; with ``expect_revision`` it is compare-and-set (0 = must not exist)."""
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        store = self._kv[bucket]
        try:
            if expect_revision is None:
                return int(await store.put(key, data))
            if expect_revision == 0:
                return int(await store.create(key, data))
            return int(await store.update(key, data, last=expect_revision))
        except (nats.js.errors.KeyWrongLastSequenceError, BadRequestError) as exc:
            raise ConflictError(f"{bucket}/{key} changed concurrently") from exc

    async def kv_snapshot(self, bucket: str) -> dict[str, bytes]:
        """Every live key of a bucket and its value, read in one pass.

        A pull read of the bucket's stream (last message per key) that stops where the server
        says nothing is pending. nats-py's ``watchall``/``keys`` decide "initial values done"
        from consumer info taken while deliveries are still in flight, and can end early on a
        loaded machine; this cannot.
        """
        stream = f"KV_{bucket}"
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
            filter_subject=f"$KV.{bucket}.>",
        )
        sub = await self.js.pull_subscribe(f"$KV.{bucket}.>", stream=stream, config=config)
        out: dict[str, bytes] = {}
        prefix = f"$KV.{bucket}."
        try:
            if (await sub.consumer_info()).num_pending == 0:
                return out
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=5)
                except TimeoutError:
                    continue
                for msg in msgs:
                    op = (msg.headers or {}).get("KV-Operation")
                    key = msg.subject[len(prefix):]
                    if op in ("DEL", "PURGE"):
                        out.pop(key, None)
                    else:
                        out[key] = msg.data
                    if msg.metadata.num_pending == 0:
                        return out
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- bundles ----------------------------------------------------------------------------------
    async def put_bundle(self, digest: str, payload: bytes) -> None:
        assert self._obj is not None
        name = digest.replace(":", "-")
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            info = await self._obj.get_info(name)
            if info is not None and not info.deleted:
                return  # stored once per digest
        await self._obj.put(name, payload)

    async def get_bundle(self, digest: str) -> bytes | None:
        assert self._obj is not None
        try:
            result = await self._obj.get(digest.replace(":", "-"))
        except (ObjectNotFoundError, NotFoundError):
            return None
        return bytes(result.data or b"")

    async def has_bundle(self, digest: str) -> bool:
        assert self._obj is not None
        try:
            info = await self._obj.get_info(digest.replace(":", "-"))
        except (ObjectNotFoundError, NotFoundError):
            return False
        return info is not None and not info.deleted

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        self._closing.append(True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 5)
        with contextlib.suppress(Exception):
            await self.nc.close()
