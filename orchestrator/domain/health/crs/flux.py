"""Flux (``*.toolkit.fluxcd.io``): sources, Kustomizations, HelmReleases, notification, images.

Status API: Flux controllers follow kstatus exactly (``Reconciling``, ``Stalled``, ``Ready``,
``status.observedGeneration``) and pause with ``spec.suspend: true``. A suspended object is
Suspended whatever its last conditions say (they describe the last run before the pause); an
object with no conditions yet is Progressing (every Flux kind gets them on first reconcile).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.crs.common import by_ready
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "flux"


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.boolean(obj, "spec", "suspend"):
        return HealthStatus(Health.SUSPENDED, "Reconciliation is suspended")
    return by_ready(obj, waiting="Waiting for the controller to reconcile")


SUFFIXES = {".toolkit.fluxcd.io": assess}
