"""Deployment history is a pure fold of events: fixtures in, attempts out."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.history import Attempt, EnvHistory

SHA1 = "a" * 40
SHA2 = "b" * 40
COMMIT = {"short": "aaaaaaa", "author": "Dev Eloper <dev@example.com>",
          "message": "bump nginx\n\nlong body", "committed_at": "2025-01-01T09:00:00Z"}


def at(minute: int, second: float = 0) -> str:
    return f"2025-01-01T10:{minute:02d}:{second:06.3f}Z"


class Log:
    """Events of one environment with explicit times and stream sequences."""

    def __init__(self, env: str = "dev") -> None:
        self.env = env
        self.items: list[tuple[int, Event]] = []

    def add(self, type_: str, sha: str, time: str, by: Event | None = None,
            env: str | None = None, **data: Any) -> Event:
        e = new_event(type_, env=env or self.env, cause=by, correlation=sha,
                      key=str(len(self.items)), data={**COMMIT, **data}).with_time(time)
        self.items.append((len(self.items) + 1, e))
        return e

    def deploy(self, sha: str, minute: int, outcome: str = ev.APPLY_SUCCEEDED,
               **data: Any) -> Event:
        d = self.add(ev.COMMIT_DETECTED, sha, at(minute))
        r = self.add(ev.RENDER_SUCCEEDED, sha, at(minute, 2), d, digest="sha256:x", objects=3,
                     duration_ms=1500.0)
        return self.add(outcome, sha, at(minute, 5), r, duration_ms=3000.0, **data)

    def attempts(self) -> list[Attempt]:
        return hist.build(self.items).get(self.env, [])


def test_a_successful_deployment_is_one_attempt_with_commit_details_and_durations() -> None:
    log = Log()
    done = log.deploy(SHA1, 0)
    [a] = log.attempts()
    assert (a.revision, a.outcome, a.stage) == (SHA1, hist.SUCCEEDED, "apply")
    assert a.author == "Dev Eloper <dev@example.com>"
    assert a.message == "bump nginx"  # first line only
    assert a.committed_at == "2025-01-01T09:00:00Z"
    assert a.started_at == at(0) and a.finished_at == at(0, 5)
    assert a.duration_ms == 5000.0
    assert (a.render_ms, a.apply_ms, a.digest, a.objects) == (1500.0, 3000.0, "sha256:x", 3)
    assert a.outcome_event == done.id
    assert (a.first_seq, a.last_seq) == (1, 3)


@pytest.mark.parametrize(("type_", "outcome", "stage"), [
    (ev.APPLY_FAILED, hist.FAILED, "apply"),
    (ev.APPLY_DEAD, hist.DEAD, "apply"),
    (ev.APPLY_SKIPPED, hist.SKIPPED, "apply"),
])
def test_apply_outcomes(type_: str, outcome: str, stage: str) -> None:
    log = Log()
    # a dead letter says why in ``reason`` (the runtime writes it), a failure in ``error``
    said = "reason" if type_ == ev.APPLY_DEAD else "error"
    log.deploy(SHA1, 0, type_, **{said: "boom" if type_ != ev.APPLY_SKIPPED else ""})
    [a] = log.attempts()
    assert (a.outcome, a.stage) == (outcome, stage)
    assert a.error == ("" if type_ == ev.APPLY_SKIPPED else "boom")
    assert a.finished


def test_render_failure_keeps_the_error_and_never_reaches_apply() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    log.add(ev.RENDER_FAILED, SHA1, at(0, 1), d, error="app/cm.yaml:7: unclosed")
    [a] = log.attempts()
    assert (a.outcome, a.stage) == (hist.RENDER_FAILED, "render")
    assert a.error == "app/cm.yaml:7: unclosed"
    assert a.duration_ms == 1000.0


def test_dead_render_records_the_runtime_reason() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    log.add(ev.RENDER_DEAD, SHA1, at(3), d, reason="handler error: disk full", attempts=8)
    [a] = log.attempts()
    assert (a.outcome, a.error) == (hist.DEAD, "handler error: disk full")


def test_retries_are_counted_and_the_newer_commit_supersedes_the_older() -> None:
    log = Log()
    d1 = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    r1 = log.add(ev.RENDER_SUCCEEDED, SHA1, at(0, 1), d1)
    log.add(ev.APPLY_RETRYING, SHA1, at(0, 2), r1, error="cluster unreachable", attempt=1)
    log.add(ev.APPLY_RETRYING, SHA1, at(0, 4), r1, error="cluster unreachable", attempt=2)
    d2 = log.add(ev.COMMIT_DETECTED, SHA2, at(1))
    r2 = log.add(ev.RENDER_SUCCEEDED, SHA2, at(1, 1), d2)
    log.add(ev.APPLY_SUPERSEDED, SHA1, at(1, 2), r1, superseded_by=SHA2)
    log.add(ev.APPLY_SUCCEEDED, SHA2, at(1, 3), r2)
    first, second = log.attempts()
    assert (first.outcome, first.retries, first.superseded_by) == (hist.SUPERSEDED, 2, SHA2)
    assert first.error == "cluster unreachable"
    assert second.outcome == hist.SUCCEEDED


def test_open_attempt_says_where_it_is() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    assert log.attempts()[0].outcome == hist.RENDERING
    r = log.add(ev.RENDER_SUCCEEDED, SHA1, at(0, 1), d)
    assert log.attempts()[0].outcome == hist.APPLYING
    log.add(ev.APPLY_RETRYING, SHA1, at(0, 2), r, error="503")
    a = log.attempts()[0]
    assert (a.outcome, a.finished, a.finished_at, a.duration_ms) == (hist.RETRYING, False, "",
                                                                     None)


def test_health_verdicts_mark_the_applied_attempt_degraded_then_recovered() -> None:
    log = Log()
    done = log.deploy(SHA1, 0)
    log.add(ev.HEALTH_DEGRADED, SHA1, at(2), done, status="Degraded",
            message="web: 0/3 ready")
    log.add(ev.HEALTH_DEGRADED, SHA1, at(3), done, status="Degraded")
    log.add(ev.HEALTH_HEALTHY, SHA1, at(4), done, status="Healthy")
    [a] = log.attempts()
    assert (a.health, a.degraded_at, a.recovered_at) == ("Healthy", at(2), at(4))
    assert a.outcome == hist.SUCCEEDED  # the apply outcome is not rewritten


def test_a_verdict_about_an_attempt_not_in_the_log_is_ignored() -> None:
    log = Log()
    log.add(ev.HEALTH_DEGRADED, SHA1, at(0), status="Degraded")
    assert log.attempts() == []


def test_a_retried_dead_letter_reopens_the_attempt() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    r = log.add(ev.RENDER_SUCCEEDED, SHA1, at(0, 1), d)
    dead = log.add(ev.APPLY_DEAD, SHA1, at(2), r, reason="max deliveries",
                   original=r.to_dict())
    again = hist.retry_of(dead, hist.dead_original(dead), 1).with_time(at(5))
    log.items.append((len(log.items) + 1, again))
    [a] = log.attempts()
    assert (a.outcome, a.attempts, a.error, a.finished_at) == (hist.APPLYING, 2, "", "")
    log.add(ev.APPLY_SUCCEEDED, SHA1, at(5, 2), again)
    [a] = log.attempts()
    assert (a.outcome, a.attempts) == (hist.SUCCEEDED, 2)


def test_a_terminal_event_republished_for_the_notifier_changes_nothing() -> None:
    log = Log()
    done = log.deploy(SHA1, 0)
    nd = log.add(ev.NOTIFY_DEAD, SHA1, at(1), done, original=done.to_dict())
    before = log.attempts()
    log.items.append((len(log.items) + 1, hist.retry_of(nd, done, 1)))
    assert log.attempts() == before


def test_other_environments_and_events_about_no_environment_are_not_history() -> None:
    log = Log()
    log.deploy(SHA1, 0)
    log.add(ev.CONFIG_LOADED, SHA1, at(1), env=ev.NO_ENV)
    log.add(ev.NOTIFY_SENT, SHA1, at(1), route="ops")
    log.add(ev.COMMIT_DETECTED, SHA1, at(2), env="prod")
    built = hist.build(log.items)
    assert set(built) == {"dev", "prod"}
    assert len(built["dev"]) == 1


def test_fold_keeps_the_newest_attempts_and_skips_what_it_already_holds() -> None:
    log = Log()
    for i in range(hist.HISTORY_KEPT + 5):
        log.deploy(f"{i:040x}", i % 60)
    h = EnvHistory()
    for seq, e in log.items:
        h = hist.fold(h, e, seq)
    assert len(h.entries) == hist.HISTORY_KEPT
    assert list(h.entries) == log.attempts()[-hist.HISTORY_KEPT:]
    assert h.seq == len(log.items)
    # a redelivery of anything already folded is a no-op
    for seq, e in log.items:
        assert hist.fold(h, e, seq) is h


def test_history_round_trips_through_json_dicts() -> None:
    log = Log()
    log.deploy(SHA1, 0)
    h = EnvHistory(tuple(log.attempts()), 3)
    assert EnvHistory.from_dict(h.to_dict()) == h


def test_only_dead_letters_and_failures_can_be_retried() -> None:
    log = Log()
    done = log.deploy(SHA1, 0)
    with pytest.raises(hist.NotRetryable):
        hist.retry_of(done, done, 1)
    dead = log.add(ev.RENDER_DEAD, SHA1, at(1), reason="x")  # no original carried
    with pytest.raises(hist.NotRetryable):
        hist.dead_original(dead)


def test_a_retry_has_a_deterministic_id_per_dead_letter_and_number() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, SHA1, at(0))
    dead = log.add(ev.RENDER_DEAD, SHA1, at(1), d, original=d.to_dict())
    one = hist.retry_of(dead, hist.dead_original(dead), 1)
    assert one.id == hist.retry_of(dead, d, 1).id
    assert one.id != hist.retry_of(dead, d, 2).id
    assert (one.type, one.subject, one.correlationid) == (d.type, d.subject, d.correlationid)
    assert one.causationid == dead.id
    assert one.data["retry_of"] == dead.id and one.data["original_id"] == d.id


def test_a_drift_heal_is_an_attempt_of_its_own() -> None:
    log = Log()
    done = log.deploy(SHA1, 0)
    drift = log.add(ev.DRIFT_DETECTED, SHA1, at(10), done, summary="1 object changed")
    log.add(ev.APPLY_SUCCEEDED, SHA1, at(10, 1), drift, cause="drift")
    deploy, heal = log.attempts()
    assert (deploy.cause, deploy.finished_at) == ("commit", at(0, 5))
    assert (heal.cause, heal.outcome, heal.revision) == ("drift", hist.SUCCEEDED, SHA1)
