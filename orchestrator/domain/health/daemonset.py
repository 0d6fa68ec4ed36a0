"""DaemonSet health, as gitops-engine ``getAppsv1DaemonSetHealth`` (kubectl rollout status).

Progressing until the latest generation is observed. ``OnDelete`` is then Healthy (pods update
only when someone deletes them); otherwise Progressing until every scheduled pod is updated and
available.
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
        return HealthStatus(Health.PROGRESSING, "Waiting for rollout to finish: observed daemon "
                            "set generation less than desired generation")
    name = f.string(obj, "metadata", "name")
    desired = f.integer(obj, "status", "desiredNumberScheduled")
    updated = f.integer(obj, "status", "updatedNumberScheduled")
    available = f.integer(obj, "status", "numberAvailable")
    if f.string(obj, "spec", "updateStrategy", "type") == "OnDelete":
        return HealthStatus(Health.HEALTHY,
                            f"daemon set {updated} out of {desired} new pods have been updated")
    if updated < desired:
        return HealthStatus(Health.PROGRESSING, f'Waiting for daemon set "{name}" rollout to '
                            f"finish: {updated} out of {desired} new pods have been updated...")
    if available < desired:
        return HealthStatus(Health.PROGRESSING, f'Waiting for daemon set "{name}" rollout to '
                            f"finish: {available} of {desired} updated pods are available...")
    return HealthStatus(Health.HEALTHY)
