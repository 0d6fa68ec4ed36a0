"""Prometheus metrics of the git-watcher, per source.

Names are distinct from ``orchestrator/metrics.py`` (owned elsewhere) so the two modules never
register the same collector twice in one process; both land in the default registry that
``/metrics`` serves.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FETCH_DURATION = Histogram(
    "conveyor_fetch_duration_seconds", "Duration of one fetch of a git source",
    ["source"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
FETCH_FAILURES = Counter(
    "conveyor_fetch_failures_total", "Failed fetches of a git source, by reason",
    ["source", "reason"])


def observe_fetch(source: str, seconds: float, reason: str | None = None) -> None:
    """Record one fetch; ``reason`` (e.g. AuthenticationFailed, Unreachable) when it failed."""
    FETCH_DURATION.labels(source=source).observe(seconds)
    if reason is not None:
        FETCH_FAILURES.labels(source=source, reason=reason).inc()
