"""DORA metrics off fixture event logs (pure: the clock is an argument)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.domain import dora
from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.events import Event, new_event

NOW = datetime(2025, 1, 31, tzinfo=UTC)


class Log:
    def __init__(self) -> None:
        self.items: list[tuple[int, Event]] = []

    def add(self, type_: str, env: str, sha: str, time: str, by: Event | None = None,
            **data: Any) -> Event:
        e = new_event(type_, env=env, cause=by, correlation=sha, key=str(len(self.items)),
                      data=data).with_time(time)
        self.items.append((len(self.items) + 1, e))
        return e

    def attempt(self, env: str, sha: str, committed: str, finished: str, outcome: str,
                **data: Any) -> Event:
        """detected at the commit time, rendered, then ``outcome`` at ``finished``."""
        commit: dict[str, Any] = {"committed_at": committed, "author": "A <a@x>",
                                  "short": sha[:7]}
        d = self.add(ev.COMMIT_DETECTED, env, sha, committed, **commit)
        if outcome == ev.RENDER_FAILED:
            return self.add(outcome, env, sha, finished, d, error="bad yaml", **commit)
        r = self.add(ev.RENDER_SUCCEEDED, env, sha, committed, d, **commit)
        return self.add(outcome, env, sha, finished, r, **commit, **data)

    def metrics(self, window: timedelta = dora.DEFAULT_WINDOW) -> dict[str, dora.EnvMetrics]:
        return {m.env: m for m in dora.compute(hist.build(self.items), now=NOW, window=window)}


def busy_dev() -> Log:
    log = Log()
    log.attempt("dev", "z" * 40, "2024-11-30T09:00:00Z", "2024-12-01T10:00:00Z",
                ev.APPLY_SUCCEEDED)  # before the window
    log.attempt("dev", "a" * 40, "2025-01-10T09:00:00Z", "2025-01-10T10:00:00Z",
                ev.APPLY_SUCCEEDED)  # lead 1h
    log.attempt("dev", "b" * 40, "2025-01-11T09:00:00Z", "2025-01-11T09:30:00Z",
                ev.APPLY_FAILED)  # failing from 09:30
    log.attempt("dev", "c" * 40, "2025-01-11T10:00:00Z", "2025-01-11T11:30:00Z",
                ev.APPLY_SUCCEEDED)  # lead 1.5h; restored after 2h
    d = log.attempt("dev", "d" * 40, "2025-01-12T00:00:00Z", "2025-01-12T00:10:00Z",
                    ev.APPLY_SUCCEEDED)  # lead 10 min, then degraded at 00:20
    log.add(ev.HEALTH_DEGRADED, "dev", "d" * 40, "2025-01-12T00:20:00Z", d, status="Degraded")
    log.attempt("dev", "e" * 40, "2025-01-12T00:40:00Z", "2025-01-12T01:00:00Z",
                ev.RENDER_FAILED)  # a failure while already failing
    log.attempt("dev", "f" * 40, "2025-01-12T01:10:00Z", "2025-01-12T01:20:00Z",
                ev.APPLY_SKIPPED)  # a revert to what runs: restored after 1h
    log.attempt("dev", "g" * 40, "2025-01-13T00:00:00Z", "2025-01-13T00:00:01Z",
                ev.APPLY_SUPERSEDED)  # never applied: not counted
    log.attempt("dev", "h" * 40, "2025-01-29T23:00:00Z", "2025-01-30T00:00:00Z",
                ev.APPLY_DEAD)  # failing since, still
    return log


def test_the_four_keys_of_a_busy_environment() -> None:
    m = busy_dev().metrics()["dev"]
    assert m.deployments == 3  # a, c, d
    assert m.deployment_frequency_per_day == pytest.approx(0.1)
    assert (m.lead_time_median_s, m.lead_time_p90_s, m.lead_time_samples) == (3600, 5400, 3)
    # change attempts a b c d e h; failed b (apply), d (degraded), e (render), h (dead)
    assert (m.change_attempts, m.change_failures) == (6, 4)
    assert m.change_failure_rate == pytest.approx(4 / 6, abs=1e-4)
    assert (m.time_to_restore_median_s, m.restores) == (5400, 2)  # 2h and 1h
    assert m.failing_since == "2025-01-30T00:00:00Z"


def test_a_shorter_window_only_sees_recent_attempts() -> None:
    m = busy_dev().metrics(timedelta(days=5))["dev"]
    assert (m.deployments, m.deployment_frequency_per_day) == (0, 0.0)
    assert (m.lead_time_median_s, m.lead_time_p90_s) == (None, None)
    assert (m.change_attempts, m.change_failures, m.change_failure_rate) == (1, 1, 1.0)
    assert (m.restores, m.time_to_restore_median_s) == (0, None)
    assert m.failing_since == "2025-01-30T00:00:00Z"


def test_recovering_health_restores_and_environments_are_separate() -> None:
    log = Log()
    d = log.attempt("prod", "a" * 40, "2025-01-20T00:00:00Z", "2025-01-20T00:05:00Z",
                    ev.APPLY_SUCCEEDED)
    log.add(ev.HEALTH_DEGRADED, "prod", "a" * 40, "2025-01-20T00:06:00Z", d, status="Degraded")
    log.add(ev.HEALTH_HEALTHY, "prod", "a" * 40, "2025-01-20T00:16:00Z", d, status="Healthy")
    log.attempt("qa", "b" * 40, "2025-01-20T00:00:00Z", "2025-01-20T00:01:00Z",
                ev.APPLY_SUCCEEDED)
    found = log.metrics()
    assert set(found) == {"prod", "qa"}
    prod = found["prod"]
    assert (prod.change_attempts, prod.change_failures, prod.change_failure_rate) == (1, 1, 1.0)
    assert (prod.restores, prod.time_to_restore_median_s, prod.failing_since) == (1, 600, "")
    qa = found["qa"]
    assert (qa.change_failure_rate, qa.lead_time_median_s, qa.failing_since) == (0.0, 60, "")


def test_attempts_still_in_progress_and_rejected_commits_count_for_nothing() -> None:
    log = Log()
    log.add(ev.COMMIT_DETECTED, "dev", "a" * 40, "2025-01-20T00:00:00Z")
    d = log.add(ev.COMMIT_DETECTED, "dev", "b" * 40, "2025-01-20T00:00:00Z")
    log.add(ev.COMMIT_REJECTED, "dev", "b" * 40, "2025-01-20T00:00:01Z", d, reason="unsigned")
    m = log.metrics()["dev"]
    assert (m.deployments, m.change_attempts, m.change_failure_rate, m.failing_since) == (
        0, 0, None, "")


def test_lead_time_without_a_commit_time_is_not_a_sample() -> None:
    log = Log()
    d = log.add(ev.COMMIT_DETECTED, "dev", "a" * 40, "2025-01-20T00:00:00Z")
    log.add(ev.APPLY_SUCCEEDED, "dev", "a" * 40, "2025-01-20T00:01:00Z", d)
    m = log.metrics()["dev"]
    assert (m.deployments, m.lead_time_samples, m.lead_time_median_s) == (1, 0, None)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400),
    ("7", 7 * 86400), ("1.5h", 5400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert dora.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "d", "30x", "-1d", "1 day"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        dora.parse_duration(text)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert dora.percentile(values, 90) == 9
    assert dora.percentile(values, 100) == 10
    assert dora.percentile([5.0], 90) == 5
    assert dora.percentile([], 90) is None
    assert dora.median([1.0, 2.0, 10.0, 20.0]) == 6.0


def test_drift_heals_are_not_changes() -> None:
    log = Log()
    done = log.attempt("dev", "a" * 40, "2025-01-20T00:00:00Z", "2025-01-20T00:01:00Z",
                       ev.APPLY_SUCCEEDED)
    drift = log.add(ev.DRIFT_DETECTED, "dev", "a" * 40, "2025-01-21T00:00:00Z", done)
    log.add(ev.APPLY_SUCCEEDED, "dev", "a" * 40, "2025-01-21T00:00:01Z", drift,
            cause="drift")
    m = log.metrics()["dev"]
    assert (m.deployments, m.change_attempts) == (1, 1)
