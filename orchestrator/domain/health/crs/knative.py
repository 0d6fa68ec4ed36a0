"""Knative (``*.knative.dev``): Serving, Eventing, their sources and the operator.

Status API: every Knative resource follows Knative's condition set, a top-level ``Ready``
condition (``Succeeded`` for one-shot kinds) summarising the dependent ones (e.g.
``ConfigurationsReady``, ``RoutesReady``): True is ready, False failed, Unknown still
reconciling; plus ``status.observedGeneration``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.crs.common import by_ready
from orchestrator.domain.health.status import HealthStatus

PROJECT = "knative"


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    succeeded = f.condition(obj, "Succeeded")
    if succeeded is not None and f.condition(obj, "Ready") is None:
        lag = kstatus.generation_lag(obj)
        return lag or kstatus.ready(succeeded, progressing_reasons=frozenset())
    return by_ready(obj, waiting="Waiting for the controller to reconcile",
                    progressing_reasons=frozenset())


SUFFIXES = MappingProxyType({".knative.dev": assess})
