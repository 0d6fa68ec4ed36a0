"""Deployment health, as gitops-engine ``getAppsv1DeploymentHealth`` (kubectl rollout status).

A paused Deployment is Suspended. While the controller has not observed the latest generation
the rollout is Progressing. Once observed: the ``Progressing`` condition with reason
``ProgressDeadlineExceeded`` is Degraded; fewer updated replicas than wanted, old replicas still
terminating, or updated replicas not yet available are Progressing; otherwise Healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.boolean(obj, "spec", "paused"):
        return HealthStatus(Health.SUSPENDED, "Deployment is paused")
    generation = f.integer(obj, "metadata", "generation")
    observed = f.integer(obj, "status", "observedGeneration")
    if generation > observed:
        return HealthStatus(Health.PROGRESSING, "Waiting for rollout to finish: observed "
                            "deployment generation less than desired generation")
    wanted = f.optional_integer(obj, "spec", "replicas")
    replicas = f.integer(obj, "status", "replicas")
    updated = f.integer(obj, "status", "updatedReplicas")
    available = f.integer(obj, "status", "availableReplicas")
    progressing = f.condition(obj, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        name = f.string(obj, "metadata", "name")
        return HealthStatus(Health.DEGRADED, f'Deployment "{name}" exceeded its progress deadline')
    if wanted is not None and updated < wanted:
        return HealthStatus(Health.PROGRESSING, f"Waiting for rollout to finish: {updated} out "
                            f"of {wanted} new replicas have been updated...")
    if replicas > updated:
        return HealthStatus(Health.PROGRESSING, f"Waiting for rollout to finish: "
                            f"{replicas - updated} old replicas are pending termination...")
    if available < updated:
        return HealthStatus(Health.PROGRESSING, f"Waiting for rollout to finish: {available} "
                            f"of {updated} updated replicas are available...")
    return HealthStatus(Health.HEALTHY)
