"""Flux (``*.toolkit.fluxcd.io``): sources, Kustomizations, HelmReleases, notification, images.

Status API: Flux controllers follow kstatus exactly (``Reconciling``, ``Stalled``, ``Ready``,
``status.observedGeneration``) and pause with ``spec.suspend: true``. A suspended object is
Suspended whatever its last conditions say (they describe the last run before the pause); an
object with no conditions yet is Progressing (every Flux kind gets them on first reconcile).
Verdicts agree with Argo CD's Flux checks; the message is the deciding condition's message
(Argo CD shows the Ready reason) and a Ready Unknown without Reconciling is still Progressing
(Argo CD: Degraded), as kstatus reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.crs.common import by_ready
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "flux"


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.boolean(obj, "spec", "suspend"):
        return HealthStatus(Health.SUSPENDED, f"{obj.get('kind')} is suspended")
    return by_ready(obj, waiting="Status unknown")


SUFFIXES = MappingProxyType({".toolkit.fluxcd.io": assess})
