"""CustomResourceDefinition health, as gitops-engine
``getApiExtenstionsV1CustomResourceDefinitionHealth``.

No conditions yet: Progressing. Then, in this order: ``Terminating`` True is Progressing (being
deleted), ``NamesAccepted`` False Degraded (a name clashes with another CRD), ``Established``
not True Degraded, ``NonStructuralSchema`` True Degraded, and otherwise Healthy. The applier
waits for this before applying custom resources of the new kinds.

One deliberate deviation: ``Established`` False with reason ``Installing`` is Progressing, not
Degraded. The API server sets it for the moment between accepting a new CRD's names and serving
it, so gitops-engine's reading would fail a wave that only had to wait a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    conditions = f.conditions(obj)
    if not conditions:
        return HealthStatus(Health.PROGRESSING, "Status conditions not found")
    # Each finding keeps its own condition's message (gitops-engine shares one variable, so a
    # later condition can overwrite the message of the one that decides).
    terminating: str | None = None
    names_rejected: str | None = None
    not_established: str | None = None
    installing = False
    violations: str | None = None
    for condition in conditions:
        status = condition.get("status")
        kind = condition.get("type")
        message = f.text(condition.get("message"))
        if kind == "Terminating" and status == "True":
            terminating = message
        elif kind == "NamesAccepted" and status == "False":
            names_rejected = message
        elif kind == "Established" and status != "True":
            not_established = message
            installing = condition.get("reason") == "Installing"
        elif kind == "NonStructuralSchema" and status == "True":
            violations = message
    established = not_established is None and any(
        c.get("type") == "Established" for c in conditions)
    if terminating is not None:
        return HealthStatus(Health.PROGRESSING, f"CRD is being terminated: {terminating}")
    if names_rejected is not None:
        return HealthStatus(Health.DEGRADED, f"CRD names have not been accepted: {names_rejected}")
    if not established and installing:
        return HealthStatus(Health.PROGRESSING, f"CRD is being established: {not_established}")
    if not established:
        return HealthStatus(Health.DEGRADED, f"CRD is not established: {not_established or ''}")
    if violations is not None:
        return HealthStatus(Health.DEGRADED, f"Schema violations found: {violations}")
    return HealthStatus(Health.HEALTHY, "CRD is healthy")
