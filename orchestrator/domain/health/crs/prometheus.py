"""Prometheus Operator (``monitoring.coreos.com``).

Status API: the workload kinds (Prometheus, PrometheusAgent, Alertmanager, ThanosRuler) pause
with ``spec.paused`` and report ``Available`` (True, False or ``Degraded``: some replicas
missing) and ``Reconciled`` conditions; the configuration kinds (ServiceMonitor, PodMonitor,
Probe, PrometheusRule, ScrapeConfig, AlertmanagerConfig) have no status, or since v0.79 a
``status.bindings[].conditions`` list whose ``Accepted`` False means a Prometheus rejected it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.crs.common import Check
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "prometheus-operator"
GROUP = "monitoring.coreos.com"


def workload(obj: Mapping[str, Any]) -> HealthStatus:
    if f.boolean(obj, "spec", "paused"):
        return HealthStatus(Health.SUSPENDED, "Reconciliation is paused")
    lag = kstatus.generation_lag(obj)
    if lag is not None:
        return lag
    by_type = f.condition_map(obj)
    reconciled, available = by_type.get("Reconciled"), by_type.get("Available")
    if reconciled is not None and f.is_false(reconciled):
        return HealthStatus(Health.DEGRADED, f.message_of(reconciled))
    if available is None:
        return HealthStatus(Health.PROGRESSING, "Waiting for the operator to report status")
    state = available.get("status")
    if state == "True":
        return HealthStatus(Health.HEALTHY, f.message_of(available))
    if state in ("False", "Degraded"):
        return HealthStatus(Health.DEGRADED, f.message_of(available))
    return HealthStatus(Health.PROGRESSING, f.message_of(available))


def configuration(obj: Mapping[str, Any]) -> HealthStatus | None:
    bindings = f.mappings(obj, "status", "bindings")
    if not bindings:
        return None
    for binding in bindings:
        for condition in f.mappings(binding, "conditions"):
            if condition.get("type") == "Accepted" and condition.get("status") == "False":
                return HealthStatus(Health.DEGRADED, f.message_of(condition))
    return HealthStatus(Health.HEALTHY, "Accepted")


KINDS: Mapping[tuple[str, str], Check] = MappingProxyType({
    **{(GROUP, kind): workload
       for kind in ("Prometheus", "PrometheusAgent", "Alertmanager", "ThanosRuler")},
    **{(GROUP, kind): configuration
       for kind in ("ServiceMonitor", "PodMonitor", "Probe", "PrometheusRule", "ScrapeConfig",
                    "AlertmanagerConfig")},
})
