"""cert-manager (``cert-manager.io``, ``acme.cert-manager.io``).

Status API: ``Certificate`` conditions ``Ready`` and ``Issuing`` (True while a certificate is
being issued or renewed, which is progress, not failure), ``Issuer``/``ClusterIssuer`` ``Ready``,
``CertificateRequest`` ``Ready`` with reasons Pending/Failed/Issued plus ``Denied`` and
``InvalidRequest`` conditions, ACME ``Order``/``Challenge`` ``status.state`` (valid, ready,
pending, processing, invalid, errored, expired). Certificate follows Argo CD's check:
``Issuing`` first, and ``Ready`` False with reason ``Issuing`` is Progressing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.crs.common import by_ready
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "cert-manager"
GROUP = "cert-manager.io"
ACME = "acme.cert-manager.io"


def certificate(obj: Mapping[str, Any]) -> HealthStatus:
    conditions = f.conditions(obj)
    for condition in conditions:
        if condition.get("type") == "Issuing" and condition.get("status") == "True":
            return HealthStatus(Health.PROGRESSING, f.text(condition.get("message")))
    for condition in conditions:
        if condition.get("type") == "Ready" and condition.get("status") == "False":
            # cert-manager sets Ready False, reason Issuing, a moment before it adds the
            # Issuing condition: that is progress too (Argo CD's check has the same case)
            health = Health.PROGRESSING if condition.get("reason") == "Issuing" \
                else Health.DEGRADED
            return HealthStatus(health, f.text(condition.get("message")))
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return HealthStatus(Health.HEALTHY, f.text(condition.get("message")))
    return HealthStatus(Health.PROGRESSING, "Waiting for certificate")


def issuer(obj: Mapping[str, Any]) -> HealthStatus:
    return by_ready(obj, waiting="Initializing issuer")


def certificate_request(obj: Mapping[str, Any]) -> HealthStatus:
    by_type = f.condition_map(obj)
    for failing in ("Denied", "InvalidRequest"):
        if f.is_true(by_type.get(failing)):
            return HealthStatus(Health.DEGRADED, f.message_of(by_type[failing]))
    return by_ready(obj, waiting="Waiting for the certificate to be issued",
                    progressing_reasons=frozenset({"Pending"}))


_STATES = MappingProxyType({
    "valid": Health.HEALTHY, "ready": Health.PROGRESSING, "pending": Health.PROGRESSING,
    "processing": Health.PROGRESSING, "invalid": Health.DEGRADED,
    "errored": Health.DEGRADED, "expired": Health.DEGRADED,
})


def acme_state(obj: Mapping[str, Any]) -> HealthStatus:
    state = f.string(obj, "status", "state")
    reason = f.string(obj, "status", "reason")
    if not state:
        return HealthStatus(Health.PROGRESSING, reason or f"{obj.get('kind')} is pending")
    health = _STATES.get(state, Health.UNKNOWN)
    return HealthStatus(health, reason or f"{obj.get('kind')} is {state}")


KINDS = MappingProxyType({
    (GROUP, "Certificate"): certificate,
    (GROUP, "Issuer"): issuer,
    (GROUP, "ClusterIssuer"): issuer,
    (GROUP, "CertificateRequest"): certificate_request,
    (ACME, "Order"): acme_state,
    (ACME, "Challenge"): acme_state,
})
