"""Ingress health, as gitops-engine ``getNetworkingv1IngressHealth``.

Healthy once the ingress controller has published an address in
``status.loadBalancer.ingress``, Progressing until then. (Some controllers never publish one;
Argo CD users then override the check, which Conveyor does not support yet.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.items(obj, "status", "loadBalancer", "ingress"):
        return HealthStatus(Health.HEALTHY)
    return HealthStatus(Health.PROGRESSING, "Waiting for the ingress controller's address")
