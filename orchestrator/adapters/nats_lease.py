"""A lease in the ``conveyor-leases`` KV bucket: one active holder, standbys waiting, fenced.

Appliers of one environment may run as several replicas for availability; exactly one acts.
The lease is a key (``applier.<consumer>``) whose value names its holder. Everything is
compare-and-set on the key's revision, so two candidates can never both win:

- **acquire**: create the key when it is missing; take it over (update with ``last=revision``)
  when it was released, or when its revision has not moved for a whole ``ttl`` as seen by this
  candidate's own monotonic clock (no wall clocks compared across machines).
- **renew**: the holder updates the key every ``ttl / 3`` with ``last=`` its revision. A failed
  compare-and-set means someone took over: the lease is *lost* and the holder stops acting.
- **fence**: the revision at acquisition is the fencing token. It only grows (the bucket's
  stream sequence), targets record it with what they write and refuse a write whose token is
  lower than the one they hold: a stale holder (paused, partitioned) cannot overwrite its
  successor's work (``orchestrator/targets/git``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.errors import ConflictError

log = structlog.get_logger(__name__)


@dataclass
class Lease:
    bus: EventBus
    key: str
    holder: str  # unique per process: who holds it, in words
    ttl: float = 10.0
    token: int = 0  # the fencing token while held (0: not held)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _revision: int = 0
    _renewing: asyncio.Task[None] | None = None

    async def acquire(self) -> int:
        """Wait until this candidate holds the lease; its fencing token."""
        seen: tuple[int, float] | None = None  # (revision, when it was first seen)
        while True:
            try:
                token = await self._try(seen)
            except ConflictError:
                token = None  # another candidate won this round
            except Exception as exc:  # NATS unavailable for a while: keep trying
                log.warning("lease.unavailable", key=self.key, error=str(exc))
                token = None
            if token is not None:
                return token
            current = await self._read()
            if current is not None and (seen is None or seen[0] != current):
                seen = (current, time.monotonic())
            # a lease has no push notification worth trusting across elections: look again
            await asyncio.sleep(self.ttl / 4)

    async def _read(self) -> int | None:
        with contextlib.suppress(Exception):
            found = await self.bus.kv_get(subjects.LEASE_BUCKET, self.key)
            return found[1] if found is not None else 0
        return None

    async def _try(self, seen: tuple[int, float] | None) -> int | None:
        found = await self.bus.kv_get(subjects.LEASE_BUCKET, self.key)
        value = {"holder": self.holder, "ttl": self.ttl}
        if found is None:
            revision = await self.bus.kv_put(subjects.LEASE_BUCKET, self.key, value,
                                             expect_revision=0)
        else:
            held, revision = found
            stale = seen is not None and seen[0] == revision \
                and time.monotonic() - seen[1] >= self.ttl
            if not held.get("released") and not stale:
                return None
            revision = await self.bus.kv_put(subjects.LEASE_BUCKET, self.key, value,
                                             expect_revision=revision)
            log.info("lease.taken_over", key=self.key, holder=self.holder,
                     previous=held.get("holder"), released=bool(held.get("released")))
        self.token = self._revision = revision
        self.lost.clear()
        self._renewing = asyncio.create_task(self._renew(), name=f"lease:{self.key}")
        log.info("lease.acquired", key=self.key, holder=self.holder, token=revision)
        return revision

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                self._revision = await self.bus.kv_put(
                    subjects.LEASE_BUCKET, self.key, {"holder": self.holder, "ttl": self.ttl},
                    expect_revision=self._revision)
            except ConflictError:
                log.warning("lease.lost", key=self.key, holder=self.holder, token=self.token)
                self.token = 0
                self.lost.set()
                return
            except Exception as exc:  # unavailable: try again; a successor may take over
                log.warning("lease.renew_failed", key=self.key, error=str(exc))

    async def release(self) -> None:
        """Hand over at once (a graceful stop): standbys take a released lease right away."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(BaseException):
                await self._renewing
            self._renewing = None
        if self.token:
            with contextlib.suppress(Exception):
                await self.bus.kv_put(subjects.LEASE_BUCKET, self.key,
                                      {"holder": self.holder, "released": True},
                                      expect_revision=self._revision)
            log.info("lease.released", key=self.key, holder=self.holder)
        self.token = 0
