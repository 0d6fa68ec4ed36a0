"""Health assessment of Kubernetes objects: ``assess(obj) -> HealthStatus | None``.

Faithful to argoproj/gitops-engine ``pkg/health``: the same six statuses in the same severity
order (see ``status``), the same checks per kind, each in its own module with the Go function it
follows named in its docstring, and the same rules around them:

- an object being deleted (``metadata.deletionTimestamp``) is Progressing, "Pending deletion";
- a check that cannot read the object (a field of the wrong type) gives Unknown, with the
  reason, instead of raising;
- ``None`` (the object was not found in the cluster) is Missing.

**Objects with no notion of health** (ConfigMap, Secret, ServiceAccount, RBAC, a custom resource
without conditions...) return ``None``, as gitops-engine returns nil. We keep ``None`` rather
than answering Healthy so callers can tell "nothing to wait for" from "checked and healthy";
``worst`` ignores ``None``, which is how Argo CD aggregates an application's health, so an
environment of ConfigMaps only is Healthy.

Beyond gitops-engine, and documented in their modules: CronJob follows Argo CD's built-in Lua
check, and any other object with standard ``status.conditions`` (Ready, Available, Reconciling,
Stalled) is assessed by ``conditions``. Dispatch is by API group and kind, for every version of
the group: the fields these checks read are the same in every version Kubernetes has served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.domain.health import (
    apiservice,
    conditions,
    crd,
    cronjob,
    daemonset,
    deployment,
    hpa,
    ingress,
    job,
    pod,
    pvc,
    replicaset,
    service,
    statefulset,
)
from orchestrator.domain.health.fields import MalformedObject
from orchestrator.domain.health.status import Health, HealthStatus, is_worse, worst

__all__ = ["MISSING", "Health", "HealthCheck", "HealthStatus", "assess", "check_for", "is_worse",
           "worst"]

HealthCheck = Callable[[Mapping[str, Any]], HealthStatus | None]
"""One kind's assessment: a pure function of the live object."""

MISSING = HealthStatus(Health.MISSING, "Not found in the cluster")

_CHECKS: dict[tuple[str, str], HealthCheck] = {
    ("apps", "Deployment"): deployment.assess,
    ("extensions", "Deployment"): deployment.assess,
    ("apps", "StatefulSet"): statefulset.assess,
    ("apps", "ReplicaSet"): replicaset.assess,
    ("extensions", "ReplicaSet"): replicaset.assess,
    ("apps", "DaemonSet"): daemonset.assess,
    ("extensions", "DaemonSet"): daemonset.assess,
    ("", "Pod"): pod.assess,
    ("", "Service"): service.assess,
    ("", "PersistentVolumeClaim"): pvc.assess,
    ("batch", "Job"): job.assess,
    ("batch", "CronJob"): cronjob.assess,
    ("networking.k8s.io", "Ingress"): ingress.assess,
    ("extensions", "Ingress"): ingress.assess,
    ("autoscaling", "HorizontalPodAutoscaler"): hpa.assess,
    ("apiregistration.k8s.io", "APIService"): apiservice.assess,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): crd.assess,
}


def _group(obj: Mapping[str, Any]) -> str:
    api_version = str(obj.get("apiVersion") or "")
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def check_for(group: str, kind: str) -> HealthCheck:
    """The check for objects of ``group``/``kind``: a built-in one, else the conditions one."""
    return _CHECKS.get((group, kind), conditions.assess)


def assess(obj: Mapping[str, Any] | None) -> HealthStatus | None:
    """The health of a live object; None when objects of its kind have no notion of health."""
    if obj is None:
        return MISSING
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("deletionTimestamp"):
        return HealthStatus(Health.PROGRESSING, "Pending deletion")
    check = check_for(_group(obj), str(obj.get("kind") or ""))
    try:
        return check(obj)
    except MalformedObject as exc:
        return HealthStatus(Health.UNKNOWN, str(exc))
