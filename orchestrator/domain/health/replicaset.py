"""ReplicaSet health, as gitops-engine ``getAppsv1ReplicaSetHealth``.

Progressing until the latest generation is observed; then a ``ReplicaFailure`` condition that
is True (pods cannot be created: quota, admission) is Degraded, fewer available replicas than
wanted is Progressing, and otherwise Healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    generation = f.integer(obj, "metadata", "generation")
    observed = f.integer(obj, "status", "observedGeneration")
    if generation > observed:
        return HealthStatus(Health.PROGRESSING, "Waiting for rollout to finish: observed replica "
                            "set generation less than desired generation")
    failure = f.condition(obj, "ReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        return HealthStatus(Health.DEGRADED, f.text(failure.get("message")))
    wanted = f.optional_integer(obj, "spec", "replicas")
    available = f.integer(obj, "status", "availableReplicas")
    if wanted is not None and available < wanted:
        return HealthStatus(Health.PROGRESSING, f"Waiting for rollout to finish: {available} out "
                            f"of {wanted} new replicas are available...")
    return HealthStatus(Health.HEALTHY)
