"""PersistentVolumeClaim health, as gitops-engine ``getCorev1PVCHealth``.

``Bound`` is Healthy, ``Pending`` Progressing (waiting for a volume; with a
``WaitForFirstConsumer`` storage class this lasts until a pod uses the claim), ``Lost`` Degraded
(the volume behind it is gone), anything else Unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus

_BY_PHASE = MappingProxyType({"Bound": Health.HEALTHY, "Pending": Health.PROGRESSING,
                              "Lost": Health.DEGRADED})


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    phase = f.string(obj, "status", "phase")
    return HealthStatus(_BY_PHASE.get(phase, Health.UNKNOWN))
