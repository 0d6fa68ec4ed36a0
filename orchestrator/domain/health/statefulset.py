"""StatefulSet health, as gitops-engine ``getAppsv1StatefulSetHealth`` (kubectl rollout status).

Progressing until the controller has observed the latest generation and every wanted replica
is ready. A RollingUpdate with a ``partition`` is done once the pods above the partition are
updated; ``OnDelete`` is Healthy as soon as the pods are ready (pods update only when someone
deletes them); otherwise the rollout is done when the update revision is the current revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    generation = f.integer(obj, "metadata", "generation")
    observed = f.integer(obj, "status", "observedGeneration")
    if observed == 0 or generation > observed:
        return HealthStatus(Health.PROGRESSING,
                            "Waiting for statefulset spec update to be observed...")
    wanted = f.optional_integer(obj, "spec", "replicas")
    ready = f.integer(obj, "status", "readyReplicas")
    updated = f.integer(obj, "status", "updatedReplicas")
    if wanted is not None and ready < wanted:
        return HealthStatus(Health.PROGRESSING, f"Waiting for {wanted - ready} pods to be ready...")
    strategy = f.string(obj, "spec", "updateStrategy", "type")
    rolling = f.field(obj, "spec", "updateStrategy", "rollingUpdate")
    if strategy == "RollingUpdate" and rolling is not None:
        partition = f.optional_integer(obj, "spec", "updateStrategy", "rollingUpdate",
                                       "partition")
        if wanted is not None and partition is not None and updated < wanted - partition:
            return HealthStatus(Health.PROGRESSING, "Waiting for partitioned roll out to finish: "
                                f"{updated} out of {wanted - partition} new pods have been "
                                "updated...")
        return HealthStatus(Health.HEALTHY,
                            f"partitioned roll out complete: {updated} new pods have been "
                            "updated...")
    if strategy == "OnDelete":
        return HealthStatus(Health.HEALTHY,
                            f"statefulset has {ready} ready pods ({updated} updated)")
    update_revision = f.string(obj, "status", "updateRevision")
    current_revision = f.string(obj, "status", "currentRevision")
    if update_revision != current_revision:
        return HealthStatus(Health.PROGRESSING, "waiting for statefulset rolling update to "
                            f"complete {updated} pods at revision {update_revision}...")
    current = f.integer(obj, "status", "currentReplicas")
    return HealthStatus(Health.HEALTHY, f"statefulset rolling update complete {current} pods at "
                        f"revision {current_revision}...")
