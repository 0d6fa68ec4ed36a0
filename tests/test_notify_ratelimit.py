"""Rate limiting and coalescing (pure: the test owns the clock)."""

from __future__ import annotations

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.notify.ratelimit import DIGEST_TYPE, Coalescer, TokenBucket, digest
from orchestrator.notify.routing import RateLimit


def event(i: int, env: str = "dev") -> Event:
    return new_event(ev.APPLY_SUCCEEDED, env=env, correlation=f"{i:040x}",
                     data={"short": f"{i:07x}", "message": f"change {i}\nbody",
                           "author": "Ada"}).with_time(f"2025-11-26T09:{i:02d}:00Z")


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket.per_minute(RateLimit(per_minute=6, burst=2))  # one every 10 s
    assert bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)
    assert bucket.available_at(100.0) == pytest.approx(110.0)
    assert not bucket.take(109.9)
    assert bucket.take(110.0)
    assert bucket.take(200.0) and bucket.take(200.0)  # refills to the burst, no further
    assert not bucket.take(200.0)


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket.per_minute(RateLimit(per_minute=60, burst=1))
    assert bucket.take(50.0)
    assert not bucket.take(10.0)
    assert bucket.take(51.0)


def test_within_the_limit_events_go_out_at_once() -> None:
    coalescer = Coalescer.for_limit(RateLimit(per_minute=60, burst=3))
    sent = [coalescer.offer(event(i), now=0.0) for i in range(3)]
    assert sent == [[event(0)], [event(1)], [event(2)]]
    assert coalescer.flush(0.0) is None and coalescer.next_flush_at(0.0) is None


def test_over_the_limit_events_are_coalesced_into_one_digest() -> None:
    coalescer = Coalescer.for_limit(RateLimit(per_minute=6, burst=1))
    assert coalescer.offer(event(0), now=0.0) == [event(0)]
    for i in range(1, 6):
        assert coalescer.offer(event(i), now=float(i)) == []
    assert coalescer.flush(5.0) is None  # no token yet
    assert coalescer.next_flush_at(5.0) == pytest.approx(10.0)

    out = coalescer.flush(10.0)

    assert out is not None and out.type == DIGEST_TYPE
    assert out.subject == "dev" and out.correlationid == ""
    assert out.data["count"] == 5 and out.data["omitted"] == 0
    assert [e["short"] for e in out.data["events"]] == [f"{i:07x}" for i in range(1, 6)]
    assert out.data["events"][0] == {
        "id": event(1).id, "type": ev.APPLY_SUCCEEDED, "env": "dev", "stage": "apply",
        "outcome": "succeeded", "severity": "info", "revision": f"{1:040x}",
        "short": "0000001", "message": "change 1", "author": "Ada", "time": event(1).time,
    }
    assert coalescer.pending == [] and coalescer.next_flush_at(10.0) is None


def test_held_events_keep_their_order_behind_the_queue() -> None:
    coalescer = Coalescer.for_limit(RateLimit(per_minute=6, burst=1))
    coalescer.offer(event(0), now=0.0)
    coalescer.offer(event(1), now=1.0)
    # a token is free again at 10 s, but event 1 is still waiting: event 2 queues behind it
    assert coalescer.offer(event(2), now=10.0) == []
    out = coalescer.flush(10.0)
    assert out is not None and [e["id"] for e in out.data["events"]] == [event(1).id,
                                                                          event(2).id]


def test_a_single_held_event_is_sent_as_itself() -> None:
    coalescer = Coalescer.for_limit(RateLimit(per_minute=6, burst=1))
    coalescer.offer(event(0), now=0.0)
    coalescer.offer(event(1), now=1.0)
    assert coalescer.flush(10.0) == event(1)


def test_digest_is_deterministic_and_caps_its_list() -> None:
    held = [event(i, env="dev" if i % 2 else "prod") for i in range(30)]
    first, again = digest(held, max_listed=20), digest(list(held), max_listed=20)
    assert first.id == again.id  # a replay after a crash publishes the same id
    assert first.subject == ev.NO_ENV
    assert first.data["count"] == 30 and first.data["omitted"] == 10
    assert len(first.data["events"]) == 20 and first.data["events"][-1]["id"] == held[-1].id
    assert first.causationid == held[-1].id
    assert digest(held[:29]).id != first.id
