"""Prometheus metrics, all derived from the events this process publishes.

Every event leaves through ``EventBus.publish``, which calls ``event_published`` once the server
has acknowledged a new (non-duplicate) message. Counting there, rather than in each service,
means a redelivered input that re-emits the same event id is not counted twice, and every
service (the api's ``/metrics`` or a ``HealthServer``'s) exports the same series.

- ``conveyor_events_total{type,outcome}``: events published, by CloudEvents type and outcome.
- ``conveyor_stage_latency_seconds{stage}``: cause to effect, from the two events' ``time``. The
  cause's time is remembered for recently published events; an effect whose cause was published
  by another process (microservice mode) is not observed here. ``stage`` is the effect's stage.
- ``conveyor_render_duration_seconds{renderer}`` and ``conveyor_apply_duration_seconds{target}``:
  from the ``duration_ms`` that render and apply outcomes carry; ``target`` is the target's kind
  (the first word of its description: ``git``, ``kubernetes``), ``unknown`` when it failed before
  a target was built.
- ``conveyor_notifications_total{provider,outcome}``: ``notify.sent`` / ``notify.failed``.
- ``conveyor_fetch_duration_seconds{source}`` is not here: the git-watcher times its fetches
  where they happen (``services/git_watcher/metrics.py``), on the same default registry.
- ``conveyor_consumer_pending{consumer}``: messages a durable consumer has still to handle
  (``num_pending + num_ack_pending``), refreshed by ``refresh_consumer_pending`` (the api does so
  on every scrape).

A metrics failure must never fail a publish: ``event_published`` logs and carries on.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.domain.trace import parse_time

if TYPE_CHECKING:
    from orchestrator.adapters.nats_bus import EventBus

log = structlog.get_logger(__name__)

# From a few milliseconds (an in-process hop) to ten minutes (a slow rollout).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0, 120.0, 300.0, 600.0)
REMEMBERED_CAUSES: Final = 10_000
UNKNOWN: Final = "unknown"

RENDER_OUTCOMES: Final = frozenset({ev.RENDER_SUCCEEDED, ev.RENDER_FAILED})
APPLY_OUTCOMES: Final = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED})
NOTIFY_OUTCOMES: Final = frozenset({ev.NOTIFY_SENT, ev.NOTIFY_FAILED})


class Metrics:
    """Conveyor's series on one registry (the process-wide default unless a test gives one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
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
        self._times: OrderedDict[str, float] = OrderedDict()  # event id -> epoch seconds
        self._consumers: set[str] = set()

    # -- publish ----------------------------------------------------------------------------
    def event_published(self, event: Event, *, duplicate: bool = False) -> None:
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
            if cause_at is not None and at >= cause_at:
                self.stage_latency.labels(stage=event.stage).observe(at - cause_at)
            self._times[event.id] = at
            self._times.move_to_end(event.id)
            while len(self._times) > REMEMBERED_CAUSES:
                self._times.popitem(last=False)
        data = event.data
        seconds = _seconds(data.get("duration_ms"))
        if event.type in RENDER_OUTCOMES and seconds is not None:
            self.render_duration.labels(renderer=_renderer(data)).observe(seconds)
        elif event.type in APPLY_OUTCOMES and seconds is not None:
            self.apply_duration.labels(target=_target_kind(data)).observe(seconds)
        if event.type in NOTIFY_OUTCOMES:
            self.notifications.labels(provider=str(data.get("provider") or UNKNOWN),
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

    async def refresh_consumer_pending(self, bus: EventBus) -> dict[str, int]:
        """Read every durable consumer of the stream and update the gauge."""
        from orchestrator import subjects

        infos = await bus.js.consumers_info(subjects.STREAM)
        pending = {
            str(info.config.durable_name): int(info.num_pending or 0)
            + int(info.num_ack_pending or 0)
            for info in infos if info.config.durable_name  # ephemeral readers are not queues
        }
        self.set_consumer_pending(pending)
        return pending


def _epoch(value: str) -> float | None:
    parsed = parse_time(value) if value else None
    return parsed.timestamp() if parsed is not None else None


def _seconds(ms: Any) -> float | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
        return None
    return float(ms) / 1000.0


def _renderer(data: Mapping[str, Any]) -> str:
    if data.get("renderer"):
        return str(data["renderer"])
    env = data.get("env")
    render = env.get("render") if isinstance(env, Mapping) else None
    kind = render.get("type") if isinstance(render, Mapping) else None
    return str(kind) if kind else UNKNOWN


def _target_kind(data: Mapping[str, Any]) -> str:
    words = str(data.get("target") or "").split()
    return words[0] if words else UNKNOWN


# The process-wide instance on the default registry, which every /metrics endpoint exports.
METRICS: Final = Metrics()


def event_published(event: Event, *, duplicate: bool = False) -> None:
    METRICS.event_published(event, duplicate=duplicate)


async def refresh_consumer_pending(bus: EventBus) -> dict[str, int]:
    return await METRICS.refresh_consumer_pending(bus)
