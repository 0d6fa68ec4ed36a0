"""Health of any object that reports standard ``status.conditions`` (custom resources mostly).

gitops-engine has no such fallback (a custom resource without a Lua check has no health); we add
one because Flux, cert-manager, Crossplane, Cluster API and most operators follow the Kubernetes
API conventions (and kstatus): ``Ready``/``Available`` say "done", ``Reconciling`` says "working",
``Stalled`` says "stuck". In order:

1. no conditions at all: no health notion (None), like a ConfigMap;
2. ``status.observedGeneration`` behind ``metadata.generation``: Progressing (the controller has
   not looked at the latest spec, so its conditions describe an older one);
3. ``Stalled`` True: Degraded;
4. ``Reconciling`` True: Progressing;
5. ``Ready`` True: Healthy; False with reason ``Progressing`` (Flux's "still working"):
   Progressing; False otherwise: Degraded; Unknown: Progressing;
6. ``Available`` True: Healthy; otherwise Progressing (as APIService's ``Available``);
7. other conditions only: no health notion (None).

Messages are the deciding condition's message, else its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def _message(condition: Mapping[str, Any]) -> str:
    return f.text(condition.get("message")) or f.text(condition.get("reason"))


def assess(obj: Mapping[str, Any]) -> HealthStatus | None:
    conditions = f.conditions(obj)
    if not conditions:
        return None
    observed = f.optional_integer(obj, "status", "observedGeneration")
    generation = f.integer(obj, "metadata", "generation")
    if observed is not None and observed < generation:
        return HealthStatus(Health.PROGRESSING, f"Waiting for the controller to observe "
                            f"generation {generation} (observed {observed})")
    by_type: dict[str, Mapping[str, Any]] = {}
    for condition in conditions:
        by_type.setdefault(f.text(condition.get("type")), condition)

    stalled = by_type.get("Stalled")
    if stalled is not None and stalled.get("status") == "True":
        return HealthStatus(Health.DEGRADED, _message(stalled))
    reconciling = by_type.get("Reconciling")
    if reconciling is not None and reconciling.get("status") == "True":
        return HealthStatus(Health.PROGRESSING, _message(reconciling))
    ready = by_type.get("Ready")
    if ready is not None:
        status = ready.get("status")
        if status == "True":
            return HealthStatus(Health.HEALTHY, _message(ready))
        if status == "False" and ready.get("reason") != "Progressing":
            return HealthStatus(Health.DEGRADED, _message(ready))
        return HealthStatus(Health.PROGRESSING, _message(ready))
    available = by_type.get("Available")
    if available is not None:
        healthy = available.get("status") == "True"
        return HealthStatus(Health.HEALTHY if healthy else Health.PROGRESSING, _message(available))
    return None
