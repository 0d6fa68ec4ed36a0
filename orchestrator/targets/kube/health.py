"""Waiting for applied objects to become healthy, and the health report events carry.

Health is the ``HealthJudge``'s assessment of the *live* object (the apply's rules: the
repository's and the operator's Lua and CEL rules, then the built-in ones; without a judge the
built-in ``orchestrator.domain.health.evaluate``): first the object the apply returned, then,
for those not ready, the object re-read from the API every ``poll_interval`` until the deadline
(the contract server has no watch; on a real cluster a watch would save requests, not change
the outcome).

Ready means Healthy, Suspended (paused on purpose, as Argo CD lets a wave proceed) or no
verdict: a kind with no notion of health (a ConfigMap), or a custom resource that no rule
knows, which is not waited for but named in the report (``no_rule``, in the
``conveyor.health.*`` event and its message) so a user knows to add a rule. Degraded ends the
wait at once, as Flux's kstatus "Failed" does: a rollout past its progress deadline will not
heal by waiting. Anything else (Progressing, Missing, Unknown) is waited for until the
deadline.

After the verdict, ``children`` lists what the applied workloads own in the live cluster, as
Argo CD's resource tree does: a Deployment's ReplicaSets and their Pods, a ReplicaSet's,
StatefulSet's, DaemonSet's or Job's Pods, a CronJob's Jobs and their Pods (by
``ownerReferences`` uid, one list call per kind and namespace, newest first, at most
``CHILDREN`` per owner counting grandchildren), each judged by the same rules. A list the
credentials may not make is logged and leaves that owner without children: the tree informs,
it never fails a sync.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import structlog

from orchestrator.adapters.kube import KubeClient
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.codec import build, carry
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.health import Assessment, Health, HealthStatus, api_group, evaluate, worst
from orchestrator.domain.payloads import BY_TYPE
from orchestrator.errors import PermanentError, TransientError
from orchestrator.ports import HealthJudge, HealthResult

log = structlog.get_logger(__name__)

READY = frozenset({Health.HEALTHY, Health.SUSPENDED})
EVENT_FOR = MappingProxyType({
    Health.HEALTHY: ev.HEALTH_HEALTHY, Health.SUSPENDED: ev.HEALTH_HEALTHY,
    Health.PROGRESSING: ev.HEALTH_PROGRESSING, Health.MISSING: ev.HEALTH_PROGRESSING,
    Health.DEGRADED: ev.HEALTH_DEGRADED, Health.UNKNOWN: ev.HEALTH_DEGRADED})
LISTED = 50
"""At most this many unhealthy objects are listed in an event (the count is always exact)."""
CHILDREN = 50
"""At most this many live children (grandchildren included) are listed per owner."""
OWNS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    "Deployment": (("apps/v1", "ReplicaSet"),), "ReplicaSet": (("v1", "Pod"),),
    "StatefulSet": (("v1", "Pod"),), "DaemonSet": (("v1", "Pod"),), "Job": (("v1", "Pod"),),
    "CronJob": (("batch/v1", "Job"),)})
"""What a workload kind owns (apiVersion, kind), as its controller creates them."""


def is_ready(status: HealthStatus | None) -> bool:
    return status is None or status.status in READY


@dataclass(frozen=True, slots=True)
class ObjectHealth:
    key: ObjectKey
    api_version: str
    status: HealthStatus | None
    rule: str = "built-in"  # "" when no rule knows the kind (see Assessment)
    uid: str = ""  # the live object's metadata.uid ("" when not read)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.key.kind, "namespace": self.key.namespace, "name": self.key.name,
                "status": self.status.status.value if self.status else None,
                "message": self.status.message if self.status else "", "rule": self.rule}

    @property
    def kind_name(self) -> str:
        """``Kind.group`` (``Kind`` for the core group), as kubectl names a resource type."""
        group = api_group({"apiVersion": self.api_version})
        return f"{self.key.kind}.{group}" if group else self.key.kind

    def __str__(self) -> str:
        return f"{self.key}: {self.status}"


def of(obj: Mapping[str, Any] | None, key: ObjectKey, api_version: str,
       judge: HealthJudge | None = None) -> ObjectHealth:
    assessment: Assessment = judge.evaluate(obj) if judge is not None else evaluate(obj)
    meta = obj.get("metadata") if obj is not None else None
    uid = str(meta.get("uid") or "") if isinstance(meta, Mapping) else ""
    return ObjectHealth(key, api_version, assessment.verdict, assessment.rule, uid)


def report(healths: Sequence[ObjectHealth]) -> HealthResult:
    """The worst health and the objects that are not ready."""
    status = worst(h.status for h in healths)
    bad = sorted((h for h in healths if not is_ready(h.status)), key=lambda h: h.key)
    no_rule = tuple(sorted({h.kind_name for h in healths if h.status is None and not h.rule}))
    if not bad:
        message = f"{len(healths)} object(s) healthy"
    else:
        message = f"{len(bad)} of {len(healths)} object(s) not healthy: " + "; ".join(
            str(h) for h in bad[:5]) + (" ..." if len(bad) > 5 else "")
    if no_rule:
        message += f"; no health rule for {', '.join(no_rule[:5])}" + (
            " ..." if len(no_rule) > 5 else "") + " (not waited for: add a Lua or CEL rule)"
    return HealthResult(status, message, len(bad), tuple(h.to_dict() for h in bad[:LISTED]),
                        no_rule)


@dataclass(frozen=True, slots=True)
class HealthFailure:
    """Why a health wait ended without every object ready: ``reason`` ``Degraded`` (an object
    became Degraded) or ``HealthCheckTimeout``; ``objects`` the ones that were not ready."""

    reason: str
    message: str
    objects: tuple[Mapping[str, Any], ...]


async def wait_ready(client: KubeClient, healths: list[ObjectHealth], *, deadline: float,
                     interval: float, what: str, judge: HealthJudge | None = None,
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
            current[i] = of(live, current[i].key, current[i].api_version, judge)


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(r, Mapping) and r.get("uid") == uid for r in refs)


def _newest_first(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


async def children(client: KubeClient, healths: Sequence[ObjectHealth], *,
                   judge: HealthJudge | None = None, env: str = ""
                   ) -> tuple[dict[str, Any], ...]:
    """Per applied workload that owns others (``OWNS``), its live children and theirs (one
    level down: Deployment -> ReplicaSet -> Pod), each ``{kind, name, status, message}`` and
    ``children`` when it has some; owners without children are left out."""
    lists: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}

    async def listed(api_version: str, kind: str, namespace: str) -> list[Mapping[str, Any]]:
        key = (api_version, kind, namespace)
        if key not in lists:
            try:
                lists[key] = list(await client.list(api_version, kind, namespace))
            except (TransientError, PermanentError) as exc:
                log.warning("kube.children_unlisted", env=env, kind=kind, namespace=namespace,
                            error=str(exc))
                lists[key] = []
        return lists[key]

    async def owned(kind: str, namespace: str, uid: str, budget: list[int],
                    depth: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for api_version, child_kind in OWNS.get(kind, ()):
            found = sorted((o for o in await listed(api_version, child_kind, namespace)
                            if _owned_by(o, uid)), key=_newest_first, reverse=True)
            for obj in found:
                if budget[0] <= 0:
                    return out
                budget[0] -= 1
                health = of(obj, object_key(obj), api_version, judge)
                entry: dict[str, Any] = {
                    "kind": child_kind, "name": health.key.name,
                    "status": health.status.status.value if health.status else None,
                    "message": health.status.message if health.status else ""}
                grand = (await owned(child_kind, namespace, health.uid, budget, 1)
                         if depth == 0 and health.uid and child_kind in OWNS else [])
                if grand:
                    entry["children"] = grand
                out.append(entry)
        return out

    trees: list[dict[str, Any]] = []
    for h in healths:
        if h.key.kind not in OWNS or not h.uid or not h.key.namespace or len(trees) >= LISTED:
            continue
        if kids := await owned(h.key.kind, h.key.namespace, h.uid, [CHILDREN], 0):
            trees.append({"kind": h.key.kind, "namespace": h.key.namespace,
                          "name": h.key.name, "children": kids})
    return tuple(trees)


def initial(objects: Sequence[Mapping[str, Any]],
            judge: HealthJudge | None = None) -> list[ObjectHealth]:
    return [of(obj, object_key(obj), str(obj.get("apiVersion", "")), judge) for obj in objects]


def health_event(cause: Event, health: HealthResult, source: str) -> Event:
    """``conveyor.health.<healthy|progressing|degraded>`` for a sync's health report."""
    kind = EVENT_FOR.get(health.status, ev.HEALTH_DEGRADED)
    passed = ("revision", "short", "digest", "origin_seq", "cause")
    data = {**carry(cause, passed), **health.to_dict()}
    return new_event(kind, env=cause.subject, cause=cause, source=source, key="health",
                     data=build(BY_TYPE[kind], **data))
