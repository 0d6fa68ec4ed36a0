"""The event bus: JetStream stream, KV buckets and object store behind one small class.

``EventBus`` is the one object every service is handed; it is composed of parts that share
the connection and the retry policy (``nats_core.BusCore``): reading the log
(``nats_reads``), key/value and bundles (``nats_store``); server URLs and refused credentials
are ``nats_urls``. Everything stays importable from here.

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
import ssl
import time
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import nats
import structlog
from nats.js.errors import NotFoundError

from orchestrator import subjects
from orchestrator.adapters import nats_permissions
from orchestrator.adapters.nats_core import (
    PUBLISH_RETRY_FOR,
    RETRY_WAIT_MAX,
    UNANSWERED,
    BusCore,
    Published,
    PublishObserver,
    StoredEvent,
)
from orchestrator.adapters.nats_reads import LAST_EVENTS_KEPT, EventReads, delivered_at
from orchestrator.adapters.nats_schema import (
    KV_BUCKETS,
    Reconciled,
    Retention,
    Schema,
    reconcile,
)
from orchestrator.adapters.nats_store import BUNDLES_KEPT_BYTES, NOT_DONE, BusStores
from orchestrator.adapters.nats_urls import (
    inbox_of,
    is_auth_error,
    redact,
    server_list,
    unauthorized,
    url_user,
)
from orchestrator.domain.events import Event, fit
from orchestrator.errors import TransientError

__all__ = [
    "ADMIN_TIMEOUT", "BUNDLES_KEPT_BYTES", "CONNECT_BACKOFF_MAX", "LAST_EVENTS_KEPT",
    "NOT_DONE", "PAYLOAD_HEADROOM", "PUBLISH_RETRY_FOR", "READY_WITHIN", "REQUEST_TIMEOUT",
    "RETRY_WAIT_MAX", "UNANSWERED", "BusCore", "EventBus", "PublishObserver", "Published",
    "Reconciled", "Retention", "Schema", "StoredEvent", "delivered_at", "inbox_of",
    "is_auth_error", "redact", "server_list", "unauthorized", "url_user",
]

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 2.0  # one attempt of a publish, read or KV/object operation (module doc)
ADMIN_TIMEOUT = 10.0  # stream and consumer management
PAYLOAD_HEADROOM = 8192  # subject, Nats-Msg-Id and protocol overhead
CONNECT_BACKOFF_MAX = 10.0
READY_WITHIN = 2.0  # a readiness check answers within this, whatever the servers do


class EventBus(EventReads, BusStores):
    """A connection to NATS with Conveyor's stream, buckets and store ensured."""

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

    async def publish_all(self, events: Sequence[Event]) -> list[Published]:
        return [await self.publish(e) for e in events]

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        self._closing.append(True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 5)
        with contextlib.suppress(Exception):
            await self.nc.close()
