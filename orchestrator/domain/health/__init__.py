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
check, the custom resources most clusters run have rules in ``crs`` (Argo Rollouts,
cert-manager, Crossplane, Flux, External Secrets, KEDA, Knative, Istio, Strimzi, Sealed Secrets,
Prometheus Operator, Argo Workflows), and any other object is assessed by the kstatus rules
(``kstatus``). ``evaluate`` returns a ``Assessment`` that also names the rule, so "no notion of
health" (a ConfigMap) and "no rule for this kind" (an unknown custom resource) stay apart.
Dispatch is by API group and kind, for every version of the group: the fields these checks read
are the same in every version the projects have served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import (
    apiservice,
    crd,
    cronjob,
    daemonset,
    deployment,
    hpa,
    ingress,
    job,
    kstatus,
    pod,
    pvc,
    replicaset,
    service,
    statefulset,
)
from orchestrator.domain.health.crs import crossplane, rule_for
from orchestrator.domain.health.fields import MalformedObject
from orchestrator.domain.health.status import (
    NO_RULE,
    Assessment,
    Health,
    HealthStatus,
    is_worse,
    worst,
)

__all__ = [
    "MISSING",
    "NO_RULE",
    "PENDING_DELETION",
    "Assessment",
    "Health",
    "HealthCheck",
    "HealthStatus",
    "api_group",
    "assess",
    "builtin_rule",
    "evaluate",
    "is_deleting",
    "is_worse",
    "pending_deletion",
    "run_check",
    "worst",
]

HealthCheck = Callable[[Mapping[str, Any]], HealthStatus | None]
"""One kind's assessment: a pure function of the live object."""

MISSING = HealthStatus(Health.MISSING, "Not found in the cluster")
PENDING_DELETION = HealthStatus(Health.PROGRESSING, "Pending deletion")

BUILT_IN = "built-in"
KSTATUS = "kstatus"

_CHECKS: Mapping[tuple[str, str], HealthCheck] = MappingProxyType({
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
})

_KUBERNETES_GROUPS = frozenset({"", "apps", "batch", "autoscaling", "policy", "extensions"})


def is_kubernetes_group(group: str) -> bool:
    """Groups Kubernetes itself serves: their kinds without a check have no notion of health."""
    return group in _KUBERNETES_GROUPS or group == "k8s.io" or group.endswith(".k8s.io")


def api_group(obj: Mapping[str, Any]) -> str:
    api_version = str(obj.get("apiVersion") or "")
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def builtin_rule(group: str, kind: str) -> tuple[str, HealthCheck] | None:
    """The named built-in check for ``group``/``kind``; None leaves it to the kstatus rules."""
    check = _CHECKS.get((group, kind))
    if check is not None:
        return BUILT_IN, check
    return rule_for(group, kind)


def run_check(check: HealthCheck, obj: Mapping[str, Any]) -> HealthStatus | None:
    """A check's verdict; a field of the wrong type gives Unknown with the reason."""
    try:
        return check(obj)
    except MalformedObject as exc:
        return HealthStatus(Health.UNKNOWN, str(exc))


def is_deleting(obj: Mapping[str, Any]) -> bool:
    metadata = obj.get("metadata")
    return isinstance(metadata, Mapping) and bool(metadata.get("deletionTimestamp"))


def pending_deletion(obj: Mapping[str, Any]) -> HealthStatus:
    """Progressing, "Pending deletion", naming the finalizers that hold the object (as
    Argo CD 3.x says it)."""
    finalizers = (obj.get("metadata") or {}).get("finalizers")
    if isinstance(finalizers, list) and finalizers:
        return HealthStatus(Health.PROGRESSING, "Pending deletion; blocked by finalizers: "
                            + ", ".join(str(f) for f in finalizers))
    return PENDING_DELETION


def evaluate(obj: Mapping[str, Any] | None) -> Assessment:
    """The built-in verdict on a live object and the rule that gave it (see ``Assessment``).

    In order: absent is Missing; being deleted is Progressing; a built-in check for the kind
    (Kubernetes' own kinds, then the custom resources in ``crs``); a Crossplane-shaped claim or
    XR; the kstatus rules. A Kubernetes kind without a check has no notion of health (rule
    ``built-in``); a custom resource the kstatus rules cannot read has no rule at all.
    """
    if obj is None:
        return Assessment(MISSING, BUILT_IN)
    if is_deleting(obj):
        return Assessment(pending_deletion(obj), BUILT_IN)
    group, kind = api_group(obj), str(obj.get("kind") or "")
    found = builtin_rule(group, kind)
    if found is not None:
        name, check = found
        return Assessment(run_check(check, obj), name)
    if crossplane.is_crossplane_shaped(obj):
        return Assessment(run_check(crossplane.assess, obj), "built-in:crossplane")
    verdict = run_check(kstatus.assess, obj)
    if verdict is not None:
        return Assessment(verdict, KSTATUS)
    return Assessment(None, BUILT_IN if is_kubernetes_group(group) else NO_RULE)


def assess(obj: Mapping[str, Any] | None) -> HealthStatus | None:
    """The built-in verdict on a live object; None when there is none (see ``evaluate``)."""
    return evaluate(obj).verdict
