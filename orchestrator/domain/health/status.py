"""The health vocabulary: a closed, ordered set of statuses and the value an assessment returns.

The six statuses and their order are Argo CD's (gitops-engine ``pkg/health``), so people who
know Argo CD read Conveyor's health the same way:

- ``Healthy``: the object is 100% healthy.
- ``Suspended``: paused or suspended on purpose (a paused Deployment, a suspended CronJob).
- ``Progressing``: not healthy yet, but still has a chance to become healthy.
- ``Missing``: the object does not exist in the cluster.
- ``Degraded``: failed, or could not become healthy in time (progress deadline exceeded).
- ``Unknown``: the assessment itself failed (a malformed status), so nothing is known.

Order is severity, least severe first, as gitops-engine's ``healthOrder``; ``worst`` folds many
statuses into one (the health of an environment is the worst health of its objects).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@functools.total_ordering
class Health(enum.Enum):
    """An object's health; compares by severity (``Health.HEALTHY < Health.DEGRADED``)."""

    HEALTHY = "Healthy"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    MISSING = "Missing"
    DEGRADED = "Degraded"
    UNKNOWN = "Unknown"

    @property
    def severity(self) -> int:
        """0 for Healthy up to 5 for Unknown: the index in gitops-engine's ``healthOrder``."""
        return _SEVERITY[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Health):
            return NotImplemented
        return self.severity < other.severity

    def __str__(self) -> str:
        return self.value


_SEVERITY: Mapping[Health, int] = MappingProxyType(
    {health: index for index, health in enumerate(Health)})


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The result of assessing one object: a status and a message for people ("" if none)."""

    status: Health
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status} ({self.message})" if self.message else str(self.status)


def is_worse(current: Health, new: Health) -> bool:
    """Whether ``new`` is more severe than ``current`` (gitops-engine ``IsWorse``)."""
    return new > current


def worst(statuses: Iterable[Health | HealthStatus | None]) -> Health:
    """The most severe of ``statuses``: the aggregated health of an environment.

    ``None`` (an object with no notion of health, such as a ConfigMap) counts for nothing, as
    Argo CD skips resources without health when it aggregates an application's health. With
    nothing to aggregate the result is ``Healthy``.
    """
    result = Health.HEALTHY
    for item in statuses:
        if item is None:
            continue
        health = item.status if isinstance(item, HealthStatus) else item
        if health > result:
            result = health
    return result


NO_RULE = ""
"""``Assessment.rule`` when no rule applies to the object's kind."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """One object's assessment: a verdict and the rule that gave it. Every health engine
    returns one and never raises (``orchestrator.ports.HealthResult`` is the report of a whole
    sync, folded from these).

    ``verdict`` None means "no verdict": with a ``rule`` (a ConfigMap, a template kind) the kind
    has no notion of health; with ``rule == NO_RULE`` nothing knows how to assess this kind, so
    a user knows to add a rule (``conveyor health`` and ``conveyor.health.*`` events say so).
    Rules are named ``built-in``, ``built-in:<project>``, ``kstatus``, ``lua:<source>`` and
    ``cel:<source>``.
    """

    verdict: HealthStatus | None
    rule: str = NO_RULE

    @property
    def status(self) -> Health | None:
        return self.verdict.status if self.verdict is not None else None

    @property
    def message(self) -> str:
        return self.verdict.message if self.verdict is not None else ""

    @property
    def has_rule(self) -> bool:
        return self.rule != NO_RULE

    def __str__(self) -> str:
        if self.verdict is not None:
            return str(self.verdict)
        return "n/a (no health assessment)" if self.has_rule else "n/a (no health rule)"
