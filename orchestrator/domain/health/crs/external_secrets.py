"""External Secrets Operator (``external-secrets.io``, ``generators.external-secrets.io``).

Status API: ``ExternalSecret``/``ClusterExternalSecret``/``PushSecret`` and the stores report a
``Ready`` condition (reasons ``SecretSynced``, ``SecretSyncedError``, ``SecretDeleted``, store
``Valid``/``InvalidProviderConfig``); ``ClusterExternalSecret`` lists ``failedNamespaces``.
``spec.refreshInterval: 0`` with a synced secret is a one-off fetch, still Healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.crs.common import by_ready, no_health
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "external-secrets"
GROUP = "external-secrets.io"


WAITING = HealthStatus(Health.PROGRESSING, "Waiting for ExternalSecret")


def external_secret(obj: Mapping[str, Any]) -> HealthStatus:
    """As Argo CD's check: with ``refreshPolicy: OnChange`` a ``Ready`` older than the last
    ``refreshTime`` describes the previous spec, so it is still waiting."""
    ready = f.condition(obj, "Ready")
    if ready is None:
        return WAITING
    if f.field(obj, "spec", "refreshPolicy") == "OnChange":
        changed = f.text(ready.get("lastTransitionTime"))
        refreshed = f.text(f.field(obj, "status", "refreshTime"))
        if refreshed and changed < refreshed:  # RFC 3339 in UTC, as the controller writes it
            return WAITING
    verdict = by_ready(obj, waiting=WAITING.message)
    return verdict if verdict.message or verdict.status is not Health.PROGRESSING else WAITING


def cluster_external_secret(obj: Mapping[str, Any]) -> HealthStatus:
    failed = f.items(obj, "status", "failedNamespaces")
    if failed:
        names = ", ".join(str(item.get("namespace", item)) if isinstance(item, Mapping)
                          else str(item) for item in failed[:5])
        return HealthStatus(Health.DEGRADED, f"Failed in namespaces: {names}")
    return by_ready(obj, waiting="Waiting for the secrets to be synced")


def store(obj: Mapping[str, Any]) -> HealthStatus:
    return by_ready(obj, waiting="Waiting for the store to be validated")


KINDS = MappingProxyType({
    (GROUP, "ExternalSecret"): external_secret,
    (GROUP, "PushSecret"): external_secret,
    (GROUP, "ClusterExternalSecret"): cluster_external_secret,
    (GROUP, "ClusterPushSecret"): cluster_external_secret,
    (GROUP, "SecretStore"): store,
    (GROUP, "ClusterSecretStore"): store,
})
GROUPS = MappingProxyType({"generators.external-secrets.io": no_health})
