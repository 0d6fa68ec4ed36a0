"""Property tests: any redelivery, and any crash between a projector's writes, yields the
projection of the clean log.

Events are generated across a few environments and revisions (every type the projection
folds, plus events it ignores); deliveries repeat some of them later with the same id and
sequence (at-least-once), and some deliveries crash after a prefix of the projector's writes
(the message is then delivered again, as JetStream would after ``ack_wait``). The projector's
decision (``writes``) runs against a dict standing in for the KV bucket.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.history import EnvHistory
from orchestrator.domain.state import EnvState, Records, project
from orchestrator.projector import (
    COMMIT_PREFIX,
    ENV_PREFIX,
    HISTORY_PREFIX,
    POSITION_KEY,
    detects_commit,
    records,
    writes,
)

ENVS = ("dev", "prod", "qa")
REVS = tuple(c * 40 for c in "abcd")
TYPES = (
    ev.COMMIT_DETECTED, ev.COMMIT_DETECTED, ev.RENDER_SUCCEEDED, ev.RENDER_FAILED,
    ev.RENDER_DEAD, ev.APPLY_STARTED, ev.APPLY_RETRYING, ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED,
    ev.APPLY_FAILED, ev.APPLY_SUPERSEDED, ev.APPLY_DEAD, ev.HEALTH_HEALTHY, ev.HEALTH_DEGRADED,
    ev.HEALTH_PROGRESSING, ev.NOTIFY_SENT, ev.COMMIT_REJECTED, ev.CONFIG_LOADED, "retry",
)


def make_event(i: int, kind: str, env: str, rev: str, earlier: list[Event]) -> Event:
    time = f"2025-01-01T10:{i // 60:02d}:{i % 60:02d}Z"
    if kind == "retry":  # re-publish the input of an earlier dead letter or failure
        dead = [e for e in earlier if (hist.is_dead(e) or hist.is_failed(e))
                and "original" in e.data]
        if dead:
            target = dead[i % len(dead)]
            return hist.retry_of(target, Event.from_dict(target.data["original"]), i).with_time(
                time)
        kind = ev.APPLY_RETRYING
    same = [e for e in earlier if e.subject == env and e.correlationid == rev]
    cause = same[-1] if same else None
    data: dict[str, Any] = {"short": rev[:7], "author": f"dev{i % 3} <d@x>", "message": f"m{i}",
                            "committed_at": "2025-01-01T09:00:00Z", "digest": f"sha256:{i}",
                            "duration_ms": float(i), "error": f"e{i}" if i % 2 else "",
                            "status": kind.rsplit(".", 1)[1].title(), "objects": i}
    if cause is not None and kind.endswith((".dead", ".failed")):
        data["original"] = cause.to_dict()
    subject = ev.NO_ENV if kind == ev.CONFIG_LOADED else env
    return new_event(kind, env=subject, cause=cause, correlation=rev, key=str(i),
                     data=data).with_time(time)


@st.composite
def logs(draw: st.DrawFn, max_size: int = 60) -> list[tuple[int, Event]]:
    steps = draw(st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(ENVS),
                                     st.sampled_from(REVS)), min_size=1, max_size=max_size))
    out: list[Event] = []
    for i, (kind, env, rev) in enumerate(steps):
        out.append(make_event(i, kind, env, rev, out))
    return list(enumerate(out, 1))


def roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


class Store:
    """The KV bucket, and the projector's handler against it (``Projector._fold``)."""

    def __init__(self, use_position: bool) -> None:
        self.kv: dict[str, Any] = {}
        self.use_position = use_position

    def deliver(self, seq: int, event: Event, crash_after: int | None = None) -> None:
        position = int((self.kv.get(POSITION_KEY) or {}).get("seq", 0))
        if self.use_position and seq <= position:
            return
        if event.subject != ev.NO_ENV:
            env = event.subject
            commit = self.kv.get(COMMIT_PREFIX + event.correlationid, {}) \
                if detects_commit(event) else {}
            before = Records(
                EnvState.from_dict(self.kv[ENV_PREFIX + env]) if ENV_PREFIX + env in self.kv
                else EnvState(name=env),
                EnvHistory.from_dict(self.kv.get(HISTORY_PREFIX + env) or {}),
                tuple(commit.get("envs") or ()), int(commit.get("seq") or 0))
            _, plan = writes(before, event, seq)
            for n, (key, value) in enumerate(plan):
                if crash_after is not None and n >= crash_after:
                    return
                self.kv[key] = roundtrip(value)
        if crash_after is not None:
            return  # crashed before the position was written
        self.kv[POSITION_KEY] = {"seq": max(seq, position)}


@given(log=logs(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_redelivery_in_any_order_folds_to_the_clean_projection(
        log: list[tuple[int, Event]], data: st.DataObject) -> None:
    deliveries: list[tuple[int, Event]] = []
    for i, item in enumerate(log):
        deliveries.append(item)
        # redeliver some already-delivered events (same id, same sequence), in any order
        again = data.draw(st.lists(st.integers(0, i), max_size=3), label=f"again@{i}")
        deliveries.extend(log[j] for j in again)
    assert project(deliveries) == project(log)


@given(log=logs(), data=st.data(), use_position=st.booleans())
@settings(max_examples=300, deadline=None)
def test_crashes_between_writes_and_redeliveries_leave_the_clean_records(
        log: list[tuple[int, Event]], data: st.DataObject, use_position: bool) -> None:
    store = Store(use_position)
    for i, (seq, event) in enumerate(log):
        # crash after 0..3 of this event's writes, possibly several times, then succeed
        for crash in data.draw(st.lists(st.integers(0, 3), max_size=2), label=f"crash@{i}"):
            store.deliver(seq, event, crash_after=crash)
        store.deliver(seq, event)
        for j in data.draw(st.lists(st.integers(0, i), max_size=2), label=f"again@{i}"):
            store.deliver(*log[j])
    assert store.kv == roundtrip(records(project(log)))


@given(log=logs(max_size=80))
@settings(max_examples=200, deadline=None)
def test_the_capped_history_and_the_full_history_follow_one_rule(
        log: list[tuple[int, Event]]) -> None:
    full = hist.build(log)
    for env in ENVS:
        h = EnvHistory()
        for seq, e in log:
            if e.subject == env:
                h = hist.fold(h, e, seq, keep=0)
        assert list(h.entries) == full.get(env, [])


@given(log=logs())
@settings(max_examples=100, deadline=None)
def test_folding_in_chunks_equals_folding_at_once(log: list[tuple[int, Event]]) -> None:
    half = len(log) // 2
    assert project(log[half:], project(log[:half])) == project(log)
