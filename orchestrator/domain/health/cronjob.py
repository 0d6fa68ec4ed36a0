"""CronJob health, as Argo CD's built-in ``resource_customizations/batch/CronJob/health.lua``.

gitops-engine has no Go check for CronJobs; Argo CD ships this one and we follow it as changed
in argo-cd#24430 (Argo CD 3.2): a suspended CronJob is Healthy, "CronJob is Suspended" (a
Suspended CronJob suspended the whole application, argo-cd#24428), and one without a status yet
is Healthy, "CronJob has not been scheduled yet" (a new CronJob has nothing to wait for, so a
sync wave must not hang on it); never scheduled, Healthy
(nothing says a run was missed); scheduled but never succeeded, or a run active right now,
Healthy (we cannot tell yet); a last success older than the last schedule with nothing active
means the last run failed: Degraded; otherwise Healthy.

Times are compared as instants, not as strings (the Lua compares RFC 3339 strings, which only
agrees when both use the same offset and precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus


def _instant(obj: Mapping[str, Any], name: str) -> datetime | None:
    value = f.string(obj, "status", name)
    if not value:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise f.MalformedObject(f"status.{name} must be an RFC 3339 time, got {value!r}") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    if f.boolean(obj, "spec", "suspend"):
        return HealthStatus(Health.HEALTHY, "CronJob is Suspended")
    last_schedule = _instant(obj, "lastScheduleTime")
    if last_schedule is None:
        return HealthStatus(Health.HEALTHY, "CronJob has not been scheduled yet")
    last_success = _instant(obj, "lastSuccessfulTime")
    if last_success is None:
        return HealthStatus(Health.HEALTHY,
                            "The CronJob never completed successfully. It may not be healthy")
    if f.items(obj, "status", "active"):
        return HealthStatus(Health.HEALTHY,
                            "The job is running. Its last execution may not have been successful")
    if last_success < last_schedule:
        return HealthStatus(Health.DEGRADED,
                            "CronJob has not completed its last execution successfully")
    return HealthStatus(Health.HEALTHY, "CronJob has completed its last execution successfully")
