"""Sealed Secrets (``bitnami.com``): ``SealedSecret``.

Status API: the controller sets ``Synced`` True once it unsealed the secret, False with the
reason (wrong key, a Secret of that name not owned by it). As Argo CD's check: no status yet
is Progressing, "Waiting for Sealed Secret to be decrypted".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "sealed-secrets"


def sealed_secret(obj: Mapping[str, Any]) -> HealthStatus:
    lag = kstatus.generation_lag(obj)
    if lag is not None:
        return lag
    for condition in f.conditions(obj):
        if condition.get("type") == "Synced" and condition.get("status") == "False":
            return HealthStatus(Health.DEGRADED, f.text(condition.get("message")))
        if condition.get("type") == "Synced" and condition.get("status") == "True":
            return HealthStatus(Health.HEALTHY, f.text(condition.get("message")))
    return HealthStatus(Health.PROGRESSING, "Waiting for Sealed Secret to be decrypted")


KINDS = MappingProxyType({("bitnami.com", "SealedSecret"): sealed_secret})
