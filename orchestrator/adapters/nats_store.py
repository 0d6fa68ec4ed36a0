"""Key/value buckets (JSON values, compare-and-set) and the content-addressed bundle store,
with the bundles this connection stored or read kept in memory (``BUNDLES_KEPT_BYTES``)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import nats
from nats.js import api as jsapi
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue

from orchestrator.adapters.nats_core import BusCore
from orchestrator.errors import ConflictError

NOT_DONE = (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError)  # surely not applied: a CAS may retry
BUNDLES_KEPT_BYTES = 16 << 20  # bundles kept in memory per connection (get_bundle)


class BusStores(BusCore):
    """The key/value and bundle part of ``EventBus``."""

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
