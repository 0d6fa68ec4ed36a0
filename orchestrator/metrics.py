"""Prometheus metrics, all derived from the events this process publishes.

Every event leaves through ``EventBus.publish``, which calls its ``on_published`` observer
(``Metrics.event_published``, wired by ``orchestrator/resources.py``) once the server has
acknowledged a new (non-duplicate) message. Counting there, rather than in each service, means a
redelivered input that re-emits the same event id is not counted twice, and every endpoint of
the process (the api's ``/metrics`` or the operational server's) exports the same series.

Each ``Metrics`` owns its ``CollectorRegistry``: two Conveyor instances in one process (tests,
an embedding program) count apart. There is no process-wide instance.

- ``conveyor_events_total{type,outcome}``: events published, by CloudEvents type and outcome.
- ``conveyor_stage_latency_seconds{stage}``: cause to effect, from the two events' ``time``. The
  cause's time is remembered for recently published events; an effect whose cause was published
  by another process (microservice mode) is not observed here. ``stage`` is the effect's stage;
  ``apply.started`` and ``apply.retrying`` are steps on the way, not effects, and are left out.
- ``conveyor_render_duration_seconds{renderer}`` and ``conveyor_apply_duration_seconds{target}``:
  from the ``duration_ms`` that render and apply outcomes carry; ``target`` is the target's kind
  (the first word of its description: ``git``, ``kubernetes``), ``unknown`` when it failed before
  a target was built.
- ``conveyor_notifications_total{provider,outcome}``: ``notify.sent`` / ``notify.failed``.
- ``conveyor_fetch_duration_seconds{source}`` and ``conveyor_fetch_failures_total{source,reason}``:
  the git-watcher's fetches, observed where they happen (``observe_fetch``).
- ``conveyor_consumer_pending{consumer}``: messages a durable consumer has still to handle
  (``num_pending + num_ack_pending``), set by ``set_consumer_pending`` from
  ``EventBus.consumer_pending`` (the api does so on every scrape).

A metrics failure must never fail a publish: ``event_published`` logs and carries on.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event
from orchestrator.domain.payloads import ApplyFields, NotifyFields, RenderFailed, RenderSucceeded
from orchestrator.domain.trace import parse_time

log = structlog.get_logger(__name__)

# From a few milliseconds (an in-process hop) to ten minutes (a slow rollout).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0, 120.0, 300.0, 600.0)
FETCH_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
REMEMBERED_CAUSES: Final = 10_000
UNKNOWN: Final = "unknown"
IN_PROGRESS: Final = frozenset({"started", "retrying"})
"""Not an effect of a stage, a step on the way: left out of the stage latency."""

APPLY_OUTCOMES: Final = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED})


class Metrics:
    """Conveyor's series on one registry (a new one unless the caller gives one)."""

    content_type: Final = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.events = Counter("conveyor_events", "Events published, by type and outcome.",
                              ["type", "outcome"], registry=registry)
        self.stage_latency = Histogram(
            "conveyor_stage_latency_seconds",
            "Time from a cause event to the effect it produced, by the effect's stage.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.render_duration = Histogram("conveyor_render_duration_seconds",
                                         "Duration of renders, by renderer.", ["renderer"],
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.apply_duration = Histogram("conveyor_apply_duration_seconds",
                                        "Duration of applies, by target kind.", ["target"],
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.notifications = Counter("conveyor_notifications",
                                     "Notifications sent or failed, by provider.",
                                     ["provider", "outcome"], registry=registry)
        self.consumer_pending = Gauge(
            "conveyor_consumer_pending",
            "Messages a durable consumer has not finished: pending plus awaiting ack.",
            ["consumer"], registry=registry)
        self.fetch_duration = Histogram(
            "conveyor_fetch_duration_seconds", "Duration of one fetch of a git source",
            ["source"], buckets=FETCH_BUCKETS, registry=registry)
        self.fetch_failures = Counter(
            "conveyor_fetch_failures", "Failed fetches of a git source, by reason",
            ["source", "reason"], registry=registry)
        self._times: OrderedDict[str, float] = OrderedDict()  # event id -> epoch seconds
        self._consumers: set[str] = set()

    # -- publish ----------------------------------------------------------------------------
    def event_published(self, event: Event, duplicate: bool = False) -> None:
        """Record one published event; a duplicate (dropped by the server) is not counted."""
        if duplicate:
            return
        try:
            self._record(event)
        except Exception as exc:  # never let a metric break a publish
            log.warning("metrics.record_failed", event_id=event.id, type=event.type,
                        error=str(exc))

    def _record(self, event: Event) -> None:
        self.events.labels(type=event.type, outcome=event.outcome).inc()
        at = _epoch(event.time)
        if at is not None:
            cause_at = self._times.get(event.causationid) if event.causationid else None
            if cause_at is not None and at >= cause_at and event.outcome not in IN_PROGRESS:
                self.stage_latency.labels(stage=event.stage).observe(at - cause_at)
            self._times[event.id] = at
            self._times.move_to_end(event.id)
            while len(self._times) > REMEMBERED_CAUSES:
                self._times.popitem(last=False)
        p = decode(event)
        if isinstance(p, RenderSucceeded | RenderFailed):
            seconds = _seconds(p.duration_ms)
            if seconds is not None:
                self.render_duration.labels(renderer=_renderer(p)).observe(seconds)
        elif isinstance(p, ApplyFields) and event.type in APPLY_OUTCOMES:
            seconds = _seconds(p.duration_ms)
            if seconds is not None:
                self.apply_duration.labels(target=_target_kind(p.target)).observe(seconds)
        elif isinstance(p, NotifyFields):
            self.notifications.labels(provider=str(p.provider or UNKNOWN),
                                      outcome=event.outcome).inc()

    # -- queue depth --------------------------------------------------------------------------
    def set_consumer_pending(self, pending: Mapping[str, int]) -> None:
        """Replace the per-consumer gauge; consumers that disappeared lose their series."""
        for gone in self._consumers - set(pending):
            with contextlib.suppress(KeyError):
                self.consumer_pending.remove(gone)
        for name, value in pending.items():
            self.consumer_pending.labels(consumer=name).set(value)
        self._consumers = set(pending)

    # -- fetches ----------------------------------------------------------------------------
    def observe_fetch(self, source: str, seconds: float, reason: str | None = None) -> None:
        """Record one fetch; ``reason`` (e.g. AuthenticationFailed, Unreachable) when it failed."""
        self.fetch_duration.labels(source=source).observe(seconds)
        if reason is not None:
            self.fetch_failures.labels(source=source, reason=reason).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of this registry."""
        return generate_latest(self.registry)


def _epoch(value: str) -> float | None:
    parsed = parse_time(value) if value else None
    return parsed.timestamp() if parsed is not None else None


def _seconds(ms: Any) -> float | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
        return None
    return float(ms) / 1000.0


def _renderer(p: RenderSucceeded | RenderFailed) -> str:
    if isinstance(p, RenderSucceeded) and p.renderer:
        return p.renderer
    render = p.env.get("render") if p.env is not None else None
    kind = render.get("type") if isinstance(render, Mapping) else None
    return str(kind) if kind else UNKNOWN


def _target_kind(target: str) -> str:
    words = target.split()
    return words[0] if words else UNKNOWN
