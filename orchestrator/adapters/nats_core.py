"""What every part of ``EventBus`` shares: the connection, the per-connection caches, and
the retry of requests the servers leave unanswered (``nats_bus``'s module doc: failover).

``EventBus`` composes ``EventReads`` (``nats_reads``) and ``BusStores`` (``nats_store``),
both built on ``BusCore``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from orchestrator.adapters.nats_schema import Reconciled
from orchestrator.domain.events import Event

T = TypeVar("T")

PUBLISH_RETRY_FOR = 30.0
RETRY_WAIT_MAX = 0.5  # between attempts while a stream elects a leader (a few seconds)
UNANSWERED = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError,
              nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
              nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
              asyncio.TimeoutError)

PublishObserver = Callable[[Event, bool], None]
"""Told of every acknowledged publish (the event, whether the server dropped it as a duplicate):
how the metrics count events without the bus knowing about them."""


@dataclass(frozen=True, slots=True)
class Published:
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: Event


class BusCore:
    """A connection to NATS and this process's view of it (``EventBus`` is the whole)."""

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
