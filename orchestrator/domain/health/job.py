"""Job health, as gitops-engine ``getBatchv1JobHealth``.

A Job with a ``Failed`` condition is Degraded (with the condition's message), with ``Complete``
Healthy, with ``Suspended`` True Suspended, and with none of these Progressing (still running).

One deliberate deviation: only conditions whose status is True count. gitops-engine also counts
a ``Suspended`` condition that is False (left behind when a suspended Job is resumed) as
"complete", which reports a resumed, still running Job as Healthy. Kubernetes only ever sets
``Complete`` and ``Failed`` to True, so nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    failed: str | None = None
    complete: str | None = None
    suspended: str | None = None
    for condition in f.conditions(obj):
        if condition.get("status") != "True":
            continue
        message = f.text(condition.get("message"))
        match condition.get("type"):
            case "Failed":
                failed = message
            case "Complete":
                complete = message
            case "Suspended":
                suspended = message
    if failed is not None:
        return HealthStatus(Health.DEGRADED, failed)
    if suspended is not None:
        return HealthStatus(Health.SUSPENDED, suspended or "Job is suspended")
    if complete is not None:
        return HealthStatus(Health.HEALTHY, complete)
    return HealthStatus(Health.PROGRESSING)
