"""Environment state and the projection records are pure folds of event fixtures."""

from __future__ import annotations

from typing import Any

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.history import EnvHistory
from orchestrator.domain.state import (
    PAYLOAD_TYPES,
    EnvState,
    Records,
    evolve,
    fold_records,
    project,
)
from orchestrator.projector import records, writes

A, B = "a" * 40, "b" * 40


def event(type_: str, sha: str, env: str = "dev", cause: Event | None = None, n: int = 0,
          time: str = "2025-01-01T10:00:00Z", **data: Any) -> Event:
    return new_event(type_, env=env, cause=cause, correlation=sha, key=str(n),
                     data=data).with_time(time)


def fold(*events: Event) -> EnvState:
    return project(enumerate(events, 1)).envs["dev"]


def test_a_deployment_moves_desired_attempted_applied_and_clears_in_flight() -> None:
    d = event(ev.COMMIT_DETECTED, A, time="2025-01-01T10:00:00Z")
    r = event(ev.RENDER_SUCCEEDED, A, cause=d, time="2025-01-01T10:00:01Z")
    s = fold(d)
    assert (s.desired_revision, s.in_flight, s.in_flight_since) == (
        A, "render aaaaaaa", "2025-01-01T10:00:00Z")
    s = fold(d, r)
    assert (s.last_attempted_revision, s.in_flight, s.in_flight_since) == (
        A, "apply aaaaaaa", "2025-01-01T10:00:01Z")
    ok = event(ev.APPLY_SUCCEEDED, A, cause=r, digest="sha256:1",
               time="2025-01-01T10:00:02Z")
    s = fold(d, r, ok)
    assert (s.last_applied_revision, s.bundle_digest, s.in_flight, s.in_flight_since) == (
        A, "sha256:1", "", "")
    assert (s.deployments, s.commits_seen, s.failures, s.last_seq) == (1, 1, 0, 3)


def test_a_failure_keeps_what_runs_and_remembers_what_to_retry() -> None:
    d1 = event(ev.COMMIT_DETECTED, A)
    r1 = event(ev.RENDER_SUCCEEDED, A, cause=d1)
    ok = event(ev.APPLY_SUCCEEDED, A, cause=r1, digest="sha256:1")
    d2 = event(ev.COMMIT_DETECTED, B)
    r2 = event(ev.RENDER_SUCCEEDED, B, cause=d2)
    retrying = event(ev.APPLY_RETRYING, B, cause=r2, n=1, error="503")
    failed = event(ev.APPLY_FAILED, B, cause=r2, error="forbidden")
    s = fold(d1, r1, ok, d2, r2, retrying)
    assert (s.retries, s.last_error) == (1, "503")
    s = fold(d1, r1, ok, d2, r2, retrying, failed)
    assert (s.last_applied_revision, s.last_attempted_revision) == (A, B)
    assert (s.last_error, s.last_failure_id, s.failures, s.in_flight) == (
        "forbidden", failed.id, 1, "")
    assert s.last_outcome == ev.APPLY_FAILED


def test_health_is_the_last_verdict() -> None:
    d = event(ev.COMMIT_DETECTED, A)
    s = fold(d, event(ev.HEALTH_DEGRADED, A, cause=d, status="Degraded", message="0/3 ready"))
    assert (s.health, s.health_message) == ("Degraded", "0/3 ready")


def test_retried_inputs_are_work_not_new_facts() -> None:
    d = event(ev.COMMIT_DETECTED, A)
    dead = event(ev.RENDER_DEAD, A, cause=d, reason="x", original=d.to_dict())
    again = hist.retry_of(dead, d, 1)
    s = fold(d, dead, again)
    assert (s.commits_seen, s.failures, s.in_flight) == (1, 1, "render aaaaaaa")
    ok = event(ev.APPLY_SUCCEEDED, A, cause=d)
    notify_dead = event(ev.NOTIFY_DEAD, A, cause=ok, original=ok.to_dict())
    before = fold(d, ok, notify_dead)
    after = fold(d, ok, notify_dead, hist.retry_of(notify_dead, ok, 1))
    assert after.deployments == before.deployments == 1
    assert after.last_seq == 4


def test_the_commit_map_lists_environments_sorted_with_its_sequence() -> None:
    evs = [event(ev.COMMIT_DETECTED, A, env="prod"), event(ev.COMMIT_DETECTED, A, env="dev"),
           event(ev.CONFIG_LOADED, A, env=ev.NO_ENV), event(ev.COMMIT_DETECTED, B, env="dev")]
    p = project(enumerate(evs, 1))
    assert p.commits == {A: ("dev", "prod"), B: ("dev",)}
    assert p.commit_seqs == {A: 2, B: 4}
    assert p.seq == 4
    stored = records(p)
    assert stored["commit." + A] == {"envs": ["dev", "prod"], "seq": 2}
    assert stored["position"] == {"seq": 4}
    assert set(stored) == {"env.dev", "env.prod", "history.dev", "history.prod",
                           "commit." + A, "commit." + B, "position"}


def test_each_record_skips_what_it_already_holds() -> None:
    d = event(ev.COMMIT_DETECTED, A)
    clean = fold_records(Records(EnvState("dev"), EnvHistory()), d, 7)
    # a crash after the history was written but before the state: the state folds, the
    # history does not fold twice
    partial = Records(EnvState("dev"), clean.history)
    again = fold_records(partial, d, 7)
    assert again == clean
    assert fold_records(clean, d, 7) == clean


def test_events_folded_without_their_payload_fold_as_if_it_were_decoded() -> None:
    # an environment mid-rollout with a history: what a decoded fold could still change
    d = event(ev.COMMIT_DETECTED, A, message="change", author="Ada <ada@example.com>")
    r = event(ev.RENDER_SUCCEEDED, A, cause=d, digest="sha256:1", objects=3)
    before = project([(1, d), (2, r)])
    held = Records(before.envs["dev"], before.history["dev"])
    skipped = [*sorted(ev.KNOWN_TYPES - PAYLOAD_TYPES), "conveyor.future.thing"]
    assert ev.NOTIFY_SENT in skipped and ev.DRIFT_DETECTED in skipped
    for type_ in skipped:
        for data in ({}, {"retry_of": "x" * 32, "retry": 1}, {"status": "Degraded",
                                                               "error": "boom"}):
            e = event(type_, A, cause=r, **data)
            fast = fold_records(held, e, 3)
            slow = Records(evolve(held.state, e, 3, decode(e)),
                           hist.fold(held.history, e, 3, payload=decode(e)))
            assert fast == slow, type_
            assert fast.state.last_seq == 3
            assert fold_records(fast, e, 3) == fast  # and skipped once held


def test_the_projector_writes_only_the_records_an_event_changes() -> None:
    d = event(ev.COMMIT_DETECTED, A)
    after, plan = writes(Records(EnvState("dev"), EnvHistory()), d, 1)
    assert [k for k, _ in plan] == ["history.dev", "commit." + A, "env.dev"]
    assert plan[-1][1] == after.state.to_dict()
    # an event that changes nothing but the state's sequence writes only the state
    _, plan = writes(after, event(ev.NOTIFY_SENT, A, cause=d, route="ops"), 2)
    assert [k for k, _ in plan] == ["env.dev"]


def test_state_round_trips_and_ignores_unknown_fields() -> None:
    s = fold(event(ev.COMMIT_DETECTED, A))
    assert EnvState.from_dict({**s.to_dict(), "future_field": 1}) == s
