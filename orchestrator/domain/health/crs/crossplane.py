"""Crossplane: managed resources, composite resources (XRs), claims, packages and configs.

Status API: every Crossplane object reports ``Synced`` (the last reconcile worked) and ``Ready``
(the external resource is usable); packages report ``Healthy``/``Installed``, XRDs
``Established``/``Offered``, Compositions ``ValidPipeline``, and async managed resources
``LastAsyncOperation``. As Argo CD's ``*.crossplane.io/*`` and ``*.upbound.io/*`` checks:
``LastAsyncOperation`` or ``Synced`` False anywhere in the list is Degraded (even when ``Ready`` is
True: the controller can no longer reconcile the resource), a "done" condition True is Healthy,
otherwise Progressing ("Provisioning ..."). Kinds without status (Composition, ProviderConfig...)
are Healthy. A package (Provider, Configuration, Function) whose ``Installed`` or ``Healthy``
is False is Degraded with both reasons ("ActivePackageRevision UnhealthyPackageRevision"), as
Argo CD's current check says it.

Claims and XRs live in the user's own API groups, so besides the group suffixes the rule is
used for any object shaped like Crossplane's (``is_crossplane_shaped``): ``Synced`` and ``Ready``
conditions and a Crossplane reference in its spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "crossplane"

_NO_STATUS = frozenset({"Composition", "CompositionRevision", "DeploymentRuntimeConfig",
                        "ClusterProviderConfig", "ProviderConfig", "ProviderConfigUsage",
                        "ControllerConfig"})
_PACKAGES = frozenset({"Provider", "Configuration", "Function"})
_DONE = frozenset({"Ready", "Healthy", "Offered", "Established", "ValidPipeline",
                   "RevisionHealthy"})
_SPEC_MARKS = ("compositionRef", "compositionSelector", "resourceRef", "resourceRefs",
               "crossplane", "providerConfigRef", "forProvider", "writeConnectionSecretToRef")

PROVISIONING = HealthStatus(Health.PROGRESSING, "Provisioning ...")
UP_TO_DATE = HealthStatus(Health.HEALTHY, "Resource is up-to-date.")


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    status = f.field(obj, "status")
    if not status and obj.get("kind") in _NO_STATUS:
        return UP_TO_DATE
    conditions = f.conditions(obj)
    if not conditions:
        if obj.get("kind") in ("ProviderConfig", "ClusterProviderConfig") \
                and f.field(obj, "status", "users") is not None:
            return HealthStatus(Health.HEALTHY, "Resource is in use.")
        return PROVISIONING
    if obj.get("kind") in _PACKAGES:
        by_type = f.condition_map(obj)
        installed, healthy = by_type.get("Installed"), by_type.get("Healthy")
        if f.is_false(installed) or f.is_false(healthy):
            reasons = (f.text(c.get("reason")) for c in (installed, healthy) if c is not None)
            return HealthStatus(Health.DEGRADED, " ".join(r for r in reasons if r))
    # Failures first, across all conditions: Argo CD's single pass answers Healthy when a
    # Ready True happens to be listed before a Synced False.
    for condition in conditions:
        if condition.get("type") in ("LastAsyncOperation", "Synced") \
                and condition.get("status") == "False":
            return HealthStatus(Health.DEGRADED, f.text(condition.get("message")))
    for condition in conditions:
        if condition.get("type") in _DONE and condition.get("status") == "True":
            return UP_TO_DATE
    return PROVISIONING


def is_crossplane_shaped(obj: Mapping[str, Any]) -> bool:
    """A claim, XR or managed resource of a group we cannot know in advance."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or not any(mark in spec for mark in _SPEC_MARKS):
        return False
    try:
        types = set(f.condition_map(obj))
    except f.MalformedObject:
        return False
    return {"Synced", "Ready"} <= types or "Synced" in types


SUFFIXES = MappingProxyType({".crossplane.io": assess, ".upbound.io": assess})
