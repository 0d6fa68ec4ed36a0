"""Istio: ``IstioOperator`` (``install.istio.io``), the Sail operator's ``Istio`` kinds
(``sailoperator.io``), and traffic/security configuration (``networking.istio.io``,
``security.istio.io``, ``telemetry.istio.io``, ``extensions.istio.io``).

Status API: IstioOperator ``status.status`` (HEALTHY, RECONCILING, UPDATING, ERROR,
ACTION_REQUIRED, NONE) with per-component ``status.componentStatus``; Sail's kinds have
``Ready``/``Reconciled`` conditions; configuration objects get, when istiod's status reporting
is on, ``status.conditions`` (``Reconciled``: distributed to all proxies) and analyzer
``status.validationMessages`` (``level: ERROR`` means Istio rejects part of it). Configuration
without any status has no notion of health, like a ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.crs.common import by_ready
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "istio"

_OPERATOR = MappingProxyType({
    "HEALTHY": Health.HEALTHY, "RECONCILING": Health.PROGRESSING,
    "UPDATING": Health.PROGRESSING, "NONE": Health.PROGRESSING,
    "ERROR": Health.DEGRADED, "ACTION_REQUIRED": Health.DEGRADED,
})


def istio_operator(obj: Mapping[str, Any]) -> HealthStatus:
    state = f.string(obj, "status", "status")
    if not state:
        return HealthStatus(Health.PROGRESSING, "Waiting for the operator")
    message = f.string(obj, "status", "message")
    components = f.field(obj, "status", "componentStatus")
    if not message and isinstance(components, Mapping):
        failing = sorted(name for name, item in components.items()
                         if isinstance(item, Mapping) and item.get("status") not in (
                             None, "HEALTHY"))
        message = f"Components not healthy: {', '.join(failing)}" if failing else ""
    return HealthStatus(_OPERATOR.get(state, Health.UNKNOWN), message)


def configuration(obj: Mapping[str, Any]) -> HealthStatus | None:
    for item in f.items(obj, "status", "validationMessages"):
        if isinstance(item, Mapping) and str(item.get("level", "")).upper() == "ERROR":
            code = f.text(f.field(item, "type", "code"))
            name = f.text(f.field(item, "type", "name"))
            return HealthStatus(Health.DEGRADED, " ".join(p for p in (code, name) if p)
                                or "Istio rejected this configuration")
    reconciled = f.condition(obj, "Reconciled")
    if reconciled is None:
        return None
    if reconciled.get("status") == "True":
        return HealthStatus(Health.HEALTHY, f.message_of(reconciled))
    return HealthStatus(Health.PROGRESSING, f.message_of(reconciled,
                                                         "Waiting for proxies to be updated"))


def sail(obj: Mapping[str, Any]) -> HealthStatus:
    return by_ready(obj, waiting="Waiting for the operator")


KINDS = MappingProxyType({("install.istio.io", "IstioOperator"): istio_operator})
GROUPS = MappingProxyType({
    "networking.istio.io": configuration, "security.istio.io": configuration,
    "telemetry.istio.io": configuration, "extensions.istio.io": configuration,
    "sailoperator.io": sail,
})
