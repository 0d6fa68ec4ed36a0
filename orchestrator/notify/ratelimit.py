"""Per-route rate limiting that coalesces instead of dropping; pure (the caller gives ``now``).

A ``TokenBucket`` holds ``burst`` tokens refilled at ``per_minute``. A ``Coalescer`` wraps one
per route: an event offered while a token is free is sent at once; otherwise it waits in
``pending``, and once any event waits, later ones queue behind it so order is kept. ``flush``
turns the waiting events into one digest event (``conveyor.notify.digest``: "5 more
deployments: ...") when a token is free, or gives back the single event when only one waited.
``next_flush_at`` says when to call ``flush``, so the caller sets a timer instead of polling.

``now`` is any monotonic clock in seconds (``time.monotonic()``, or a test's number).
The pending events live in memory: a caller that acks messages before they are flushed loses
them on a crash (see the notifier service).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.events import NO_ENV, Event, derive_id
from orchestrator.notify.routing import RateLimit, severity_of

DIGEST_TYPE = "conveyor.notify.digest"
MAX_LISTED = 20


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second."""

    capacity: float
    rate: float
    tokens: float = -1.0  # -1: full on first use
    updated: float | None = None

    @classmethod
    def per_minute(cls, limit: RateLimit) -> TokenBucket:
        return cls(capacity=float(limit.burst), rate=limit.per_minute / 60.0)

    def _refill(self, now: float) -> None:
        if self.tokens < 0 or self.updated is None:
            self.tokens = self.capacity
        elif now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now if self.updated is None else max(self.updated, now)

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def available_at(self, now: float) -> float:
        """The earliest time at which ``take`` will succeed."""
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        return now + (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class Coalescer:
    """Rate limiting for one route: send now, or hold and later send one digest."""

    bucket: TokenBucket
    pending: list[Event] = field(default_factory=list)
    max_listed: int = MAX_LISTED

    @classmethod
    def for_limit(cls, limit: RateLimit) -> Coalescer:
        return cls(bucket=TokenBucket.per_minute(limit))

    def offer(self, event: Event, now: float) -> list[Event]:
        """The events to send now: ``[event]`` within the limit, else ``[]`` (held)."""
        if not self.pending and self.bucket.take(now):
            return [event]
        self.pending.append(event)
        return []

    def flush(self, now: float) -> Event | None:
        """A digest of the held events (or the one held event) if a token is free now."""
        if not self.pending or not self.bucket.take(now):
            return None
        held, self.pending = self.pending, []
        return held[0] if len(held) == 1 else digest(held, max_listed=self.max_listed)

    def next_flush_at(self, now: float) -> float | None:
        """When ``flush`` will have something to send; ``None`` when nothing is held."""
        return self.bucket.available_at(now) if self.pending else None


def summary(event: Event) -> dict[str, Any]:
    """What a digest keeps of one event."""
    data = event.data
    message = str(data.get("message") or "").strip().splitlines()
    sha = event.correlationid or str(data.get("revision") or "")
    return {
        "id": event.id,
        "type": event.type,
        "env": event.subject,
        "stage": event.stage,
        "outcome": event.outcome,
        "severity": severity_of(event).label,
        "revision": sha,
        "short": str(data.get("short") or sha[:7]),
        "message": message[0] if message else "",
        "author": str(data.get("author") or ""),
        "time": event.time,
    }


def digest(events: list[Event], *, max_listed: int = MAX_LISTED) -> Event:
    """One event standing for ``events``; its id derives from theirs (stable on replay)."""
    envs = {e.subject for e in events}
    correlations = {e.correlationid for e in events}
    listed = [summary(e) for e in events[-max_listed:]]
    return Event(
        type=DIGEST_TYPE,
        subject=envs.pop() if len(envs) == 1 else NO_ENV,
        data={"count": len(events), "events": listed, "omitted": len(events) - len(listed)},
        id=derive_id(DIGEST_TYPE, *(e.id for e in events)),
        correlationid=correlations.pop() if len(correlations) == 1 else "",
        causationid=events[-1].id,
        time=events[-1].time,
    )
