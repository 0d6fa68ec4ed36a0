"""Service health, as gitops-engine ``getCorev1ServiceHealth``.

Every Service is Healthy except ``type: LoadBalancer``, which is Progressing until the cloud
controller has published an address in ``status.loadBalancer.ingress``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.string(obj, "spec", "type") == "LoadBalancer" and \
            not f.items(obj, "status", "loadBalancer", "ingress"):
        return HealthStatus(Health.PROGRESSING, "Waiting for the load balancer's address")
    return HealthStatus(Health.HEALTHY)
