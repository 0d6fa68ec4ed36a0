"""KEDA (``keda.sh``): ScaledObject, ScaledJob, trigger authentications.

Status API: ``ScaledObject``/``ScaledJob`` conditions ``Ready`` (the scaler and its HPA work),
``Active`` (there is load), ``Fallback`` (metrics fail, fallback replicas in use) and ``Paused``
(``autoscaling.keda.sh/paused`` or ``paused-replicas`` annotations). Following Argo CD's check:
Ready False or Fallback True is Degraded, Paused True Suspended, Ready True Healthy, otherwise
Progressing. ``Active`` False only means "idle" and is still Healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.crs.common import no_health
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "keda"
GROUP = "keda.sh"


def scaled(obj: Mapping[str, Any]) -> HealthStatus:
    lag = kstatus.generation_lag(obj)
    if lag is not None:
        return lag
    by_type = f.condition_map(obj)
    ready, fallback, paused = by_type.get("Ready"), by_type.get("Fallback"), by_type.get("Paused")
    if ready is not None and f.is_false(ready):
        return HealthStatus(Health.DEGRADED, f.message_of(ready))
    if fallback is not None and f.is_true(fallback):
        return HealthStatus(Health.DEGRADED, f.message_of(fallback))
    if paused is not None and f.is_true(paused):
        return HealthStatus(Health.SUSPENDED, f.message_of(paused, "Scaling is paused"))
    if ready is not None and f.is_true(ready):
        return HealthStatus(Health.HEALTHY, f.message_of(ready))
    return HealthStatus(Health.PROGRESSING, "Creating HorizontalPodAutoscaler Object")


KINDS = MappingProxyType({
    (GROUP, "ScaledObject"): scaled,
    (GROUP, "ScaledJob"): scaled,
    (GROUP, "TriggerAuthentication"): no_health,
    (GROUP, "ClusterTriggerAuthentication"): no_health,
})
