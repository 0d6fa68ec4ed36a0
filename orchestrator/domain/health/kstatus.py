"""kstatus: the generic rules for any object that follows the Kubernetes API conventions.

The order is ``sigs.k8s.io/cli-utils/pkg/kstatus`` ``checkGenericProperties`` (which Flux's
health checks use), mapped onto Argo CD's statuses (InProgress and Terminating are Progressing,
Failed is Degraded, Current is Healthy):

1. ``metadata.deletionTimestamp``: Progressing, "Pending deletion" (done by the caller for every
   kind, as gitops-engine does before any check);
2. ``status.observedGeneration`` behind ``metadata.generation``: Progressing (the conditions
   describe an older spec). Values are read tolerantly: an integer or a string of digits is
   compared, anything else (a Rollout's pod-template hash) skips the comparison instead of
   making the object Unknown;
3. the first ``Reconciling`` True or ``Stalled`` True, in the order the controller lists them:
   Progressing, resp. Degraded;
4. ``Ready``: True Healthy; False Degraded, unless its reason is ``Progressing`` (Flux's "still
   working"); Unknown Progressing;
5. ``Available`` (APIService, Deployment-like operators): True Healthy, otherwise Progressing;
6. a controller that reports ``observedGeneration`` and has caught up: Healthy ("Current");
7. nothing of the above: no verdict (None). The caller decides whether that means "no health
   notion" (a Kubernetes kind without a check) or "no rule" (a custom resource to write one for).

Messages are the deciding condition's message, else its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def generation_lag(obj: Mapping[str, Any]) -> HealthStatus | None:
    """Progressing when the controller has not observed the latest spec yet, else None."""
    observed = f.loose_integer(f.field(obj, "status", "observedGeneration"))
    generation = f.loose_integer(f.field(obj, "metadata", "generation"))
    if observed is None or generation is None or observed >= generation:
        return None
    return HealthStatus(Health.PROGRESSING, f"Waiting for the controller to observe generation "
                        f"{generation} (observed {observed})")


def reconciling_or_stalled(obj: Mapping[str, Any]) -> HealthStatus | None:
    """kstatus' step 3: the first ``Reconciling`` or ``Stalled`` condition that is True."""
    for condition in f.conditions(obj):
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Reconciling":
            return HealthStatus(Health.PROGRESSING, f.message_of(condition))
        if condition.get("type") == "Stalled":
            return HealthStatus(Health.DEGRADED, f.message_of(condition))
    return None


def ready(condition: Mapping[str, Any], *, progressing_reasons: frozenset[str] = frozenset(
        {"Progressing"})) -> HealthStatus:
    """The verdict of a ``Ready`` condition (step 4)."""
    status = condition.get("status")
    if status == "True":
        return HealthStatus(Health.HEALTHY, f.message_of(condition))
    if status == "False" and f.text(condition.get("reason")) not in progressing_reasons:
        return HealthStatus(Health.DEGRADED, f.message_of(condition))
    return HealthStatus(Health.PROGRESSING, f.message_of(condition))


def assess(obj: Mapping[str, Any]) -> HealthStatus | None:
    found = generation_lag(obj) or reconciling_or_stalled(obj)
    if found is not None:
        return found
    by_type = f.condition_map(obj)
    if "Ready" in by_type:
        return ready(by_type["Ready"])
    available = by_type.get("Available")
    if available is not None:
        healthy = available.get("status") == "True"
        return HealthStatus(Health.HEALTHY if healthy else Health.PROGRESSING,
                            f.message_of(available))
    observed = f.loose_integer(f.field(obj, "status", "observedGeneration"))
    if observed is not None and f.field(obj, "metadata", "generation") is not None:
        return HealthStatus(Health.HEALTHY, f"Resource is current (observed generation "
                            f"{observed})")
    return None
