"""Waiting for applied objects to become healthy, and the health report events carry.

Health is the pure ``orchestrator.domain.health.assess`` of the *live* object: first the object
the apply returned, then, for those not ready, the object re-read from the API every
``poll_interval`` until the deadline (the contract server has no watch; on a real cluster a
watch would save requests, not change the outcome).

Ready means Healthy, Suspended (paused on purpose, as Argo CD lets a wave proceed) or no notion
of health at all (a ConfigMap). Degraded ends the wait at once, as Flux's kstatus "Failed" does:
a rollout past its progress deadline will not heal by waiting. Anything else (Progressing,
Missing, Unknown) is waited for until the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from orchestrator.adapters.kube import KubeClient
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.health import Health, HealthStatus, assess, worst
from orchestrator.ports import HealthResult

READY = frozenset({Health.HEALTHY, Health.SUSPENDED})
EVENT_FOR = MappingProxyType({
    Health.HEALTHY: ev.HEALTH_HEALTHY, Health.SUSPENDED: ev.HEALTH_HEALTHY,
    Health.PROGRESSING: ev.HEALTH_PROGRESSING, Health.MISSING: ev.HEALTH_PROGRESSING,
    Health.DEGRADED: ev.HEALTH_DEGRADED, Health.UNKNOWN: ev.HEALTH_DEGRADED})
LISTED = 50
"""At most this many unhealthy objects are listed in an event (the count is always exact)."""


def is_ready(status: HealthStatus | None) -> bool:
    return status is None or status.status in READY


@dataclass(frozen=True, slots=True)
class ObjectHealth:
    key: ObjectKey
    api_version: str
    status: HealthStatus | None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.key.kind, "namespace": self.key.namespace, "name": self.key.name,
                "status": self.status.status.value if self.status else None,
                "message": self.status.message if self.status else ""}

    def __str__(self) -> str:
        return f"{self.key}: {self.status}"


def of(obj: Mapping[str, Any] | None, key: ObjectKey, api_version: str) -> ObjectHealth:
    return ObjectHealth(key, api_version, assess(obj))


def report(healths: Sequence[ObjectHealth]) -> HealthResult:
    """The worst health and the objects that are not ready."""
    status = worst(h.status for h in healths)
    bad = sorted((h for h in healths if not is_ready(h.status)), key=lambda h: h.key)
    if not bad:
        message = f"{len(healths)} object(s) healthy"
    else:
        message = f"{len(bad)} of {len(healths)} object(s) not healthy: " + "; ".join(
            str(h) for h in bad[:5]) + (" ..." if len(bad) > 5 else "")
    return HealthResult(status, message, len(bad), tuple(h.to_dict() for h in bad[:LISTED]))


@dataclass(frozen=True, slots=True)
class HealthFailure:
    """Why a health wait ended without every object ready: ``reason`` ``Degraded`` (an object
    became Degraded) or ``HealthCheckTimeout``; ``objects`` the ones that were not ready."""

    reason: str
    message: str
    objects: tuple[Mapping[str, Any], ...]


async def wait_ready(client: KubeClient, healths: list[ObjectHealth], *, deadline: float,
                     interval: float, what: str,
                     ) -> tuple[list[ObjectHealth], HealthFailure | None]:
    """Re-read the objects that are not ready until all are (failure None), one becomes
    Degraded or the deadline passes.

    ``healths`` is the first assessment (of the objects the apply returned); the result is the
    last one, in the same order.
    """
    current = list(healths)
    while True:
        pending = [i for i, h in enumerate(current) if not is_ready(h.status)]
        if not pending:
            return current, None
        degraded = [h for h in (current[i] for i in pending)
                    if h.status is not None and h.status.status is Health.DEGRADED]
        remaining = deadline - time.monotonic()
        if degraded or remaining <= 0:
            bad = degraded or [current[i] for i in pending]
            cause = "became Degraded" if degraded else "timed out waiting for health"
            return current, HealthFailure(
                "Degraded" if degraded else "HealthCheckTimeout",
                f"{what}: {cause}: " + "; ".join(str(h) for h in bad[:10])
                + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""),
                tuple(h.to_dict() for h in bad))
        await asyncio.sleep(min(interval, remaining))
        fresh = await asyncio.gather(*(
            client.get(current[i].api_version, current[i].key.kind,
                       current[i].key.namespace or None, current[i].key.name)
            for i in pending))
        for i, live in zip(pending, fresh, strict=True):
            current[i] = of(live, current[i].key, current[i].api_version)


def initial(objects: Sequence[Mapping[str, Any]]) -> list[ObjectHealth]:
    return [of(obj, object_key(obj), str(obj.get("apiVersion", ""))) for obj in objects]


def health_event(cause: Event, health: HealthResult, source: str) -> Event:
    """``conveyor.health.<healthy|progressing|degraded>`` for a sync's health report."""
    kind = EVENT_FOR.get(health.status, ev.HEALTH_DEGRADED)
    passed = ("revision", "short", "digest", "origin_seq", "cause")
    data: dict[str, Any] = {k: cause.data[k] for k in passed if k in cause.data}
    return new_event(kind, env=cause.subject, cause=cause, source=source, key="health",
                     data={**data, **health.to_dict()})
