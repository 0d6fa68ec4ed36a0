"""Cloud providers' Kubernetes controllers: AWS Controllers for Kubernetes (ACK,
``*.services.k8s.aws``) and Google Config Connector (``*.cnrm.cloud.google.com``).

Status APIs: ACK resources report ``ACK.Terminal`` (True: the controller gave up, the spec
must change) and ``ACK.ResourceSynced``/``Ready``; Config Connector resources report a ``Ready``
condition whose reason says where they are (``UpToDate``, ``UpdateFailed``,
``DependencyNotFound``, ``DependencyNotReady``, ``Updating``), and its operator kinds
(``ConfigConnector``, ``ConfigConnectorContext``) a ``status.healthy`` flag. As Argo CD's
checks, with one deviation: ``DependencyNotReady`` is Progressing, not Suspended, because a
sync treats Suspended as done and this resource is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "cloud"


def ack(obj: Mapping[str, Any]) -> HealthStatus:
    for condition in f.conditions(obj):
        if condition.get("type") == "ACK.Terminal" and condition.get("status") == "True":
            return HealthStatus(Health.DEGRADED, f.text(condition.get("message")))
        if condition.get("type") == "Ready" and condition.get("status") == "False":
            return HealthStatus(Health.PROGRESSING, f.text(condition.get("message")))
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return HealthStatus(Health.HEALTHY, "")
    return HealthStatus(Health.PROGRESSING, "Waiting for resource to be ready")


_CNRM_REASONS = MappingProxyType({
    "UpToDate": Health.HEALTHY, "UpdateFailed": Health.DEGRADED,
    "DependencyNotFound": Health.DEGRADED,
    "DependencyNotReady": Health.PROGRESSING,
})


def config_connector(obj: Mapping[str, Any]) -> HealthStatus:
    if kstatus.generation_lag(obj) is not None:
        return HealthStatus(Health.PROGRESSING, "Update in progress")
    healthy = f.field(obj, "status", "healthy")
    if obj.get("kind") in ("ConfigConnector", "ConfigConnectorContext") \
            and isinstance(healthy, bool):
        return HealthStatus(Health.HEALTHY if healthy else Health.DEGRADED,
                            f"{obj.get('kind')} is {'healthy' if healthy else 'not healthy'}")
    for condition in f.conditions(obj):
        reason = f.text(condition.get("reason"))
        health = _CNRM_REASONS.get(reason)
        if health is Health.HEALTHY and condition.get("status") != "True":
            continue
        if health is not None:
            return HealthStatus(health, f.text(condition.get("message")))
    return HealthStatus(Health.PROGRESSING, "Update in progress")


SUFFIXES = MappingProxyType({".services.k8s.aws": ack, ".cnrm.cloud.google.com": config_connector})
