"""Shapes several projects share: a ``Ready`` condition, a ``status.phase``, a pause flag."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.status import Health, HealthStatus

Check = Callable[[Mapping[str, Any]], HealthStatus | None]


def by_ready(obj: Mapping[str, Any], *, waiting: str,
             progressing_reasons: frozenset[str] = frozenset({"Progressing"})) -> HealthStatus:
    """Generation, then Reconciling/Stalled, then ``Ready``; no Ready yet is Progressing."""
    found = kstatus.generation_lag(obj) or kstatus.reconciling_or_stalled(obj)
    if found is not None:
        return found
    ready = f.condition(obj, "Ready")
    if ready is None:
        return HealthStatus(Health.PROGRESSING, waiting)
    verdict = kstatus.ready(ready, progressing_reasons=progressing_reasons)
    if not verdict.message and verdict.status is Health.PROGRESSING:
        return HealthStatus(Health.PROGRESSING, waiting)
    return verdict


def by_phase(obj: Mapping[str, Any], phases: Mapping[str, Health], *, waiting: str,
             messages: Mapping[str, str] | None = None) -> HealthStatus:
    """``status.phase`` looked up in ``phases``; an unknown phase is Unknown, none Progressing."""
    phase = f.string(obj, "status", "phase")
    message = f.string(obj, "status", "message")
    if not phase:
        return HealthStatus(Health.PROGRESSING, message or waiting)
    health = phases.get(phase)
    if health is None:
        return HealthStatus(Health.UNKNOWN, message or f"Unknown phase {phase!r}")
    return HealthStatus(health, message or (messages or {}).get(phase, ""))


def no_health(obj: Mapping[str, Any]) -> None:
    """Kinds that are configuration only (a template, a monitor): no notion of health."""
    return None
