"""APIService health, as gitops-engine ``getApiregistrationv1APIServiceHealth``.

The ``Available`` condition decides: True is Healthy, anything else Progressing (the backing
service may still be starting), both with ``reason: message``. Without it: Progressing,
"Waiting to be processed".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    available = f.condition(obj, "Available")
    if available is None:
        return HealthStatus(Health.PROGRESSING, "Waiting to be processed")
    message = f"{f.text(available.get('reason'))}: {f.text(available.get('message'))}"
    if available.get("status") == "True":
        return HealthStatus(Health.HEALTHY, message)
    return HealthStatus(Health.PROGRESSING, message)
