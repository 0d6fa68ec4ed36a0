"""The event bus: JetStream stream, KV buckets and object store behind one small class.

(Over 400 lines, as one module on purpose: ``EventBus`` is the one object every service is
handed; its events, key/value and bundle sections share the connection, the schema and the
publish retry policy, and splitting the class would only scatter them.)

Everything Conveyor says goes through ``publish``: one event, one message on
``conveyor.events.<env>.<stage>.<outcome>``, with ``Nats-Msg-Id`` = the event id so a retried
or re-emitted publish is dropped by the server. Publish retries (tenacity) stay inside this
adapter and reuse the same id, which is what makes them safe.

Connection settings follow the field notes: reconnect forever (a service outlives a server
restart), unsubscribe before drain on shutdown, and reconcile consumer config with
``add_consumer`` at start-up because binding an existing durable ignores the config given.

Failover: when a stream's leader dies, a request in flight to it is never answered, and one
sent before the new leader is elected gets "no responders". Publishes, reads of the stream and
the KV/object-store operations therefore wait at most ``REQUEST_TIMEOUT`` per attempt (not the
10 s of admin requests) and are retried here, quickly (``RETRY_WAIT_MAX``), for up to
``PUBLISH_RETRY_FOR``: publishes keep their ``Nats-Msg-Id`` and the others are reads or
idempotent puts, so a retry is safe. A compare-and-set is retried only when it surely did not
happen (no responders), never after a timeout. Measured with ``python -m benchmarks.failover``:
a handler's read caught by the kill used to wait 10 s, then its message's 2 s backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
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
from orchestrator.adapters import nats_permissions
from orchestrator.adapters.nats_schema import (
    KV_BUCKETS,
    Reconciled,
    Retention,
    Schema,
    reconcile,
)
from orchestrator.domain.events import Event, fit
from orchestrator.errors import ConflictError, PermanentError, TransientError

log = structlog.get_logger(__name__)
T = TypeVar("T")

PUBLISH_RETRY_FOR = 30.0
REQUEST_TIMEOUT = 2.0  # one attempt of a publish, read or KV/object operation (module doc)
ADMIN_TIMEOUT = 10.0  # stream and consumer management
RETRY_WAIT_MAX = 0.5  # between attempts while a stream elects a leader (a few seconds)
UNANSWERED = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
              nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
              nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
              asyncio.TimeoutError)
NOT_DONE = (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError)  # surely not applied: a CAS may retry
PAYLOAD_HEADROOM = 8192  # subject, Nats-Msg-Id and protocol overhead
LAST_EVENTS_KEPT = 256  # subjects whose newest event stays decoded (last_event)
BUNDLES_KEPT_BYTES = 16 << 20  # bundles kept in memory per connection (get_bundle)
CONNECT_BACKOFF_MAX = 10.0
READY_WITHIN = 2.0  # a readiness check answers within this, whatever the servers do

PublishObserver = Callable[[Event, bool], None]
"""Told of every acknowledged publish (the event, whether the server dropped it as a duplicate):
how the metrics count events without the bus knowing about them."""


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> both; a bare ``host:port`` gets ``nats://``."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise PermanentError("no NATS server given (--nats / CONVEYOR_NATS)",
                             reason="InvalidSetting")
    return [s if "://" in s else f"nats://{s}" for s in servers]


def delivered_at(msg: Msg) -> tuple[int, int]:
    """A JetStream delivery's stream sequence and how many messages are pending after it.

    Read straight from the reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.
    <cseq>.<time>.<pending>``) for the common form, without building nats-py's ``Metadata``
    (a datetime per message: a tenth of a replay's read); any other form through it."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[8])
    meta = msg.metadata
    return meta.sequence.stream, meta.num_pending


def redact(url: str) -> str:
    """A server URL without its user info (a token or password may be in it)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"***@{parts.hostname}"
                                     + (f":{parts.port}" if parts.port else "")))


def is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials (nats-server's ``-ERR 'Authorization Violation'``,
    or an expired/unknown user): retrying the same ones cannot help."""
    text = str(exc).lower()
    # not "Authentication Timeout": a slow client on a loaded host, worth another attempt
    return isinstance(exc, nats.errors.AuthorizationError) or \
        "authorization violation" in text or "authentication expired" in text \
        or "authentication revoked" in text


def url_user(url: str) -> str:
    """The user a (comma-separated) server URL connects as ("" without one)."""
    return unquote(urlsplit(server_list(url)[0]).username or "")


def inbox_of(url: str) -> str:
    """The inbox prefix a connection with ``url``'s user must use (``nats_permissions``)."""
    return nats_permissions.inbox_prefix(url_user(url))


def unauthorized(servers: Sequence[str]) -> PermanentError:
    """The error for refused credentials: the servers and the user, never the password."""
    users = sorted({unquote(urlsplit(s).username or "") for s in servers})
    who = (f"user {', '.join(repr(u) for u in users)}" if any(users)
           else "a connection without credentials")
    shown = ", ".join(redact(s) for s in servers)
    return PermanentError(
        f"NATS at {shown} refused {who} (authorization violation): check the user and "
        "password (CONVEYOR_NATS_USER / CONVEYOR_NATS_PASSWORD, or the data dir's "
        "nats/credentials.json for the embedded server)", reason="NatsUnauthorized")


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
                 on_published: PublishObserver | None = None,
                 data: JetStreamContext | None = None) -> None:
        self.nc = nc
        self.js = js
        # publishes, reads, KV and objects: short attempts, retried (module doc)
        self.data = data if data is not None else js
        self.on_published = on_published
        self._kv: dict[str, KeyValue] = {}
        self._obj: ObjectStore | None = None
        self._closing: list[bool] = []
        self.schema = Reconciled(epoch="", replicas=1)
        self.durables: set[str] = set()  # this process's durable consumers (readiness)
        # the newest event read per subject: a reader that asks again (the notifier and the
        # auto-promoter read the config in force for each event) decodes it once per change
        self._last: dict[str, StoredEvent] = {}
        # bundles this connection stored or read, by digest (content-addressed: a digest's
        # bytes never change), so the applier of this process does not read back what its
        # renderer just wrote; bounded by BUNDLES_KEPT_BYTES
        self._bundles: OrderedDict[str, bytes] = OrderedDict()
        self._bundle_bytes = 0

    @classmethod
    async def connect(cls, url: str, *, name: str = "conveyor",
                      retention: Retention | None = None,
                      replicas: int | None = None,
                      retry_for: float | None = 0.0,
                      on_published: PublishObserver | None = None,
                      tls_ca: str = "", manage_schema: bool | None = None) -> EventBus:
        """Connect to ``url`` (comma-separated servers of one cluster) and reconcile the schema.

        Servers may carry ``user:password@`` (the embedded server's generated credentials,
        nats_auth); ``tls_ca`` (a CA file) turns on TLS verified against it.

        ``retry_for``: how long an unreachable cluster is retried, with backoff and one log line
        per attempt (None: for ever, as a service does; 0: one attempt). Cancel to give up.
        A server that refuses the user or password is not retried: that is a permanent
        ``PermanentError`` (reason ``NatsUnauthorized``) naming the server and the user.

        A service's bus user (``nats_permissions``) gets replies under its own inbox prefix
        and, unless it manages the schema (``manage_schema``; by default the api's user and
        users the table does not know do), waits for the streams instead of creating them.
        """
        connecting: list[str] = [""]  # while connecting: the last server's error
        refused: list[str] = []  # this attempt's authorization errors

        async def on_error(exc: Exception) -> None:
            if connecting:  # each attempt's one line says what failed
                connecting[0] = str(exc) or type(exc).__name__
                if is_auth_error(exc):
                    refused.append(str(exc))
            else:
                log.warning("nats.error", error=str(exc))

        closing: list[bool] = []

        async def on_disconnect() -> None:
            if not closing:  # our own close() is not news
                log.warning("nats.disconnected")

        async def on_reconnect() -> None:
            log.info("nats.reconnected")

        servers = server_list(url)
        shown = ", ".join(redact(s) for s in servers)
        user = unquote(urlsplit(servers[0]).username or "")
        manage = nats_permissions.manages_schema(user) if manage_schema is None \
            else manage_schema
        started = time.monotonic()
        for attempt in itertools.count(1):
            refused.clear()
            try:
                # one attempt = every server tried (nats-py retries the initial connect for
                # ever with -1, unlogged and deaf to our backoff); once connected, reconnect
                # for ever: a service outlives a server restart
                nc = await nats.connect(
                    servers=servers, name=name, max_reconnect_attempts=1,
                    reconnect_time_wait=0.5, connect_timeout=5, allow_reconnect=True,
                    error_cb=on_error, disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    inbox_prefix=nats_permissions.inbox_prefix(user),
                    **({"tls": ssl.create_default_context(cafile=tls_ca)} if tls_ca else {}),
                )
                nc.options["max_reconnect_attempts"] = -1
                connecting.clear()
                break
            except Exception as exc:
                if refused or is_auth_error(exc):  # a wrong password stays wrong: fail fast
                    raise unauthorized(servers) from None
                delay = min(CONNECT_BACKOFF_MAX, 0.5 * 2 ** (attempt - 1))
                waited = time.monotonic() - started
                if retry_for is not None and waited + delay > retry_for:
                    raise TransientError(f"cannot connect to NATS at {shown}: {exc}",
                                         reason="NatsUnreachable") from exc
                log.warning("nats.connect_failed", servers=shown, attempt=attempt,
                            retry_in=delay, error=connecting[0] or str(exc) or repr(exc))
                await asyncio.sleep(delay)  # backoff between attempts (cancellable)
        if attempt > 1:
            log.info("nats.connected", servers=shown, attempts=attempt)
        bus = cls(nc, nc.jetstream(timeout=ADMIN_TIMEOUT), on_published=on_published,
                  data=nc.jetstream(timeout=REQUEST_TIMEOUT))
        bus._closing = closing
        try:
            for waiting in itertools.count(1):
                try:
                    await bus.ensure_schema(Schema(replicas=replicas, retention=retention),
                                            manage=manage)
                    break
                except TransientError as exc:
                    delay = min(CONNECT_BACKOFF_MAX, 0.5 * 2 ** (waiting - 1))
                    if exc.reason != "SchemaMissing" or (
                            retry_for is not None
                            and time.monotonic() - started + delay > retry_for):
                        raise
                    log.warning("nats.schema_missing", servers=shown, error=str(exc),
                                retry_in=delay)
                    await asyncio.sleep(delay)  # the api creates it (cancellable)
        except BaseException:
            await bus.close()  # or the client reconnects for ever behind the error
            raise
        return bus

    async def ensure_schema(self, schema: Schema, *, manage: bool = True) -> Reconciled:
        """Reconcile the stream, buckets and store with ``schema`` (see ``nats_schema``)."""
        self.schema = await reconcile(self.js, schema, manage=manage)
        for bucket in KV_BUCKETS:
            self._kv[bucket] = await self.data.key_value(bucket)
        self._obj = await self.data.object_store(subjects.BUNDLE_BUCKET)
        return self.schema

    @property
    def epoch(self) -> str:
        """The log's identity: a new one after the stream was wiped and re-created."""
        return self.schema.epoch

    async def not_ready(self) -> str | None:
        """Why this process cannot do its work now (None: it can): connected, and the stream,
        the buckets, the store and this process's consumers answer."""
        if not self.nc.is_connected:
            return "NATS disconnected (reconnecting)"
        names = [subjects.STREAM, *(f"KV_{b}" for b in KV_BUCKETS),
                 f"OBJ_{subjects.BUNDLE_BUCKET}"]
        checking = ""
        try:
            async with asyncio.timeout(READY_WITHIN):
                for checking in names:
                    await self.js.stream_info(checking)
                for durable in sorted(self.durables):
                    checking = f"consumer {durable}"
                    await self.js.consumer_info(subjects.STREAM, durable)
        except TimeoutError:
            return f"{checking} did not answer within {READY_WITHIN:.0f}s"
        except NotFoundError:
            return f"{checking} does not exist"
        except Exception as exc:
            return f"{checking}: {exc or type(exc).__name__}"
        return None

    # -- events ---------------------------------------------------------------------------------
    async def publish(self, event: Event) -> Published:
        subject = subjects.event_subject(event.subject, event.type)
        # what the server accepts (1 MiB by default), less room for the subject and headers:
        # an oversized event is cut to fit rather than stall its stage forever
        limit = max(4096, int(self.nc.max_payload or 1 << 20) - PAYLOAD_HEADROOM)
        payload = event.to_json()
        if len(payload) > limit:
            event = fit(event, limit)
            payload = event.to_json()
        headers = {"Nats-Msg-Id": event.id}
        ack = await self._retrying(lambda: self.data.publish(
            subject, payload, headers=headers, stream=subjects.STREAM))
        if self.on_published is not None:
            self.on_published(event, bool(ack.duplicate))
        return Published(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def _retrying(self, call: Callable[[], Awaitable[T]],
                        unanswered: tuple[type[BaseException], ...] = UNANSWERED) -> T:
        """``call()``, again while the servers do not answer (module doc), then its error."""
        try:  # the common case without a retry loop's set-up (a fleet makes thousands of calls)
            return await call()
        except unanswered:
            pass
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(unanswered),
            wait=wait_exponential(multiplier=0.1, max=RETRY_WAIT_MAX),
            stop=stop_after_delay(PUBLISH_RETRY_FOR), reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable: AsyncRetrying re-raises the last error")

    async def publish_all(self, events: Sequence[Event]) -> list[Published]:
        return [await self.publish(e) for e in events]

    async def last_event(self, env: str, event_type: str) -> StoredEvent | None:
        subject = subjects.event_subject(env, event_type)
        try:
            raw = await self._retrying(lambda: self.data.get_last_msg(
                subjects.STREAM, subject, direct=True))
        except NotFoundError:
            return None
        assert raw.data is not None and raw.seq is not None
        known = self._last.get(subject)
        if known is not None and known.seq == raw.seq:
            return known
        stored = StoredEvent(raw.seq, Event.from_json(raw.data))
        if len(self._last) >= LAST_EVENTS_KEPT:
            self._last.clear()
        self._last[subject] = stored
        return stored

    async def get_event(self, seq: int) -> StoredEvent | None:
        try:
            raw = await self._retrying(lambda: self.data.get_msg(subjects.STREAM, seq=seq))
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
            entry = await self._retrying(lambda: self._kv[bucket].get(key))
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
                return int(await self._retrying(lambda: store.put(key, data)))
            if expect_revision == 0:
                return int(await self._retrying(lambda: store.create(key, data), NOT_DONE))
            return int(await self._retrying(
                lambda: store.update(key, data, last=expect_revision), NOT_DONE))
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
        store = self._obj
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            info = await self._retrying(lambda: store.get_info(name))
            if info is not None and not info.deleted:
                self._keep_bundle(digest, payload)
                return  # stored once per digest
        await self._retrying(lambda: store.put(name, payload))  # same name, same bytes
        self._keep_bundle(digest, payload)

    async def get_bundle(self, digest: str) -> bytes | None:
        assert self._obj is not None
        kept = self._bundles.get(digest)
        if kept is not None:
            self._bundles.move_to_end(digest)
            return kept
        try:
            store = self._obj
            result = await self._retrying(lambda: store.get(digest.replace(":", "-")))
        except (ObjectNotFoundError, NotFoundError):
            return None
        payload = bytes(result.data or b"")
        self._keep_bundle(digest, payload)
        return payload

    def _keep_bundle(self, digest: str, payload: bytes) -> None:
        if len(payload) > BUNDLES_KEPT_BYTES // 8 or digest in self._bundles:
            return
        self._bundles[digest] = payload
        self._bundle_bytes += len(payload)
        while self._bundle_bytes > BUNDLES_KEPT_BYTES:
            _, old = self._bundles.popitem(last=False)
            self._bundle_bytes -= len(old)

    async def has_bundle(self, digest: str) -> bool:
        assert self._obj is not None
        try:
            store = self._obj
            info = await self._retrying(lambda: store.get_info(digest.replace(":", "-")))
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
