"""Strimzi (``kafka.strimzi.io``, ``core.strimzi.io``): Kafka and its operands.

Status API: every Strimzi custom resource reports ``Ready`` or ``NotReady`` (True, with the
exception as reason and message when reconciliation failed; reason ``Creating`` while a new
cluster starts), ``Warning`` conditions that do not change readiness, and
``ReconciliationPaused`` True when the ``strimzi.io/pause-reconciliation`` annotation is set;
plus ``status.observedGeneration``. ``KafkaRebalance`` uses its state as the condition type
(New, PendingProposal, ProposalReady, Rebalancing, Stopped, NotReady, Ready, ReconciliationPaused).
``KafkaNodePool`` reports no conditions: its Kafka's health speaks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "strimzi"

_STARTING = frozenset({"Creating", ""})
_REBALANCE = MappingProxyType({
    "Ready": Health.HEALTHY, "ProposalReady": Health.HEALTHY,
    "New": Health.PROGRESSING, "PendingProposal": Health.PROGRESSING,
    "Rebalancing": Health.PROGRESSING, "Stopped": Health.SUSPENDED,
    "ReconciliationPaused": Health.SUSPENDED, "NotReady": Health.DEGRADED,
})


def operand(obj: Mapping[str, Any]) -> HealthStatus | None:
    if obj.get("kind") == "KafkaNodePool" and not f.conditions(obj):
        return None
    by_type = f.condition_map(obj)
    if f.is_true(by_type.get("ReconciliationPaused")):
        return HealthStatus(Health.SUSPENDED, "Reconciliation is paused")
    lag = kstatus.generation_lag(obj)
    if lag is not None:
        return lag
    not_ready = by_type.get("NotReady")
    if not_ready is not None and f.is_true(not_ready):
        starting = f.text(not_ready.get("reason")) in _STARTING
        return HealthStatus(Health.PROGRESSING if starting else Health.DEGRADED,
                            f.message_of(not_ready))
    ready = by_type.get("Ready")
    if f.is_true(ready):
        return HealthStatus(Health.HEALTHY, "")
    if ready is not None and f.is_false(ready):
        return HealthStatus(Health.DEGRADED, f.message_of(ready))
    return HealthStatus(Health.PROGRESSING, "Waiting for the operator to reconcile")


def rebalance(obj: Mapping[str, Any]) -> HealthStatus:
    for condition in f.conditions(obj):
        if condition.get("status") == "True" and condition.get("type") in _REBALANCE:
            return HealthStatus(_REBALANCE[str(condition["type"])], f.message_of(condition))
    return HealthStatus(Health.PROGRESSING, "Waiting for the rebalance to start")


KINDS = MappingProxyType({("kafka.strimzi.io", "KafkaRebalance"): rebalance})
GROUPS = MappingProxyType({"kafka.strimzi.io": operand, "core.strimzi.io": operand})
