"""HorizontalPodAutoscaler health, as gitops-engine ``getHPAHealth`` (with argo-cd#26274).

The conditions come from ``status.conditions`` (autoscaling v2, v2beta2, v2beta1) or, for
autoscaling/v1, from the JSON annotation ``autoscaling.alpha.kubernetes.io/conditions``. Then:

1. any condition saying the HPA cannot work is Degraded: ``AbleToScale`` with reason
   ``FailedGetScale``/``FailedUpdateScale`` (the target cannot be read or scaled), or
   ``ScalingActive`` with a ``FailedGet*Metric`` or ``FailedComputeMetricsReplicas`` (Argo CD
   3.x's Lua check) reason or ``InvalidSelector``/
   ``InvalidMetricSourceType`` (no metric, no decision). Checked across all conditions first,
   as Argo CD does since argo-cd#26274: an ``AbleToScale`` True listed before a failing metric
   no longer hides it.
2. otherwise ``AbleToScale`` True or ``ScalingLimited`` True is Healthy (with its message);
3. otherwise, and with no conditions at all, Progressing: "Waiting to Autoscale".

``ScalingActive`` False with ``ScalingDisabled`` (target scaled to zero) is not a failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus

CONDITIONS_ANNOTATION = "autoscaling.alpha.kubernetes.io/conditions"

_DEGRADED = frozenset({
    ("AbleToScale", "FailedGetScale"),
    ("AbleToScale", "FailedUpdateScale"),
    ("ScalingActive", "FailedGetResourceMetric"),
    ("ScalingActive", "FailedGetContainerResourceMetric"),
    ("ScalingActive", "FailedGetPodsMetric"),
    ("ScalingActive", "FailedGetObjectMetric"),
    ("ScalingActive", "FailedGetExternalMetric"),
    ("ScalingActive", "FailedComputeMetricsReplicas"),
    ("ScalingActive", "InvalidSelector"),
    ("ScalingActive", "InvalidMetricSourceType"),
})
_HEALTHY_WHEN_TRUE = frozenset({"AbleToScale", "ScalingLimited"})

WAITING = HealthStatus(Health.PROGRESSING, "Waiting to Autoscale")


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if str(obj.get("apiVersion", "")) != "autoscaling/v1":
        return f.conditions(obj)
    raw = f.field(obj, "metadata", "annotations", CONDITIONS_ANNOTATION)
    if raw is None:
        return []
    try:
        decoded = json.loads(str(raw))
    except ValueError as exc:
        raise f.MalformedObject(f"annotation {CONDITIONS_ANNOTATION} is not JSON: {exc}") from None
    return f.mappings({"conditions": decoded}, "conditions")


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    conditions = _conditions(obj)
    for condition in conditions:
        if (condition.get("type"), condition.get("reason")) in _DEGRADED:
            return HealthStatus(Health.DEGRADED, f.text(condition.get("message")))
    for condition in conditions:
        if condition.get("type") in _HEALTHY_WHEN_TRUE and condition.get("status") == "True":
            return HealthStatus(Health.HEALTHY, f.text(condition.get("message")))
    return WAITING
