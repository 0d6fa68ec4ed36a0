"""Protocols the services depend on; adapters implement them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.domain.health import Assessment, Health


class HealthJudge(Protocol):
    """Assesses live objects (``orchestrator.health_rules.HealthEngine``: the user's Lua and CEL
    rules, then the built-in ones). ``None`` is an object not found: Missing."""

    def evaluate(self, obj: Mapping[str, Any] | None) -> Assessment: ...


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    env: str
    revision: str
    digest: str
    objects: Sequence[dict[str, Any]]
    origin_seq: int  # stream sequence of the commit event: orders applies in one environment
    message: str = ""  # commit subject, for the target's own records
    cause: str = ""  # "commit" or "drift"
    health: HealthJudge | None = None  # the rules in force for this apply; None: built-ins
    epoch: str = ""  # the event log's epoch (nats_schema): recorded with the target's state
    fence: int = 0  # the applier's lease token (nats_lease); 0: no lease


@dataclass(frozen=True, slots=True)
class TargetState:
    """What a target holds now, as far as Conveyor is concerned."""

    digest: str | None
    revision: str | None
    origin_seq: int | None  # meaningful only within the log of ``epoch``
    epoch: str | None = None  # None: written before epochs were recorded (or never written)


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The health a target reports for a sync: the worst status, in words, and the objects
    that are not ready (at most a listed number; ``unhealthy`` is the exact count)."""

    status: Health
    message: str
    unhealthy: int = 0
    objects: tuple[Mapping[str, Any], ...] = ()
    no_rule: tuple[str, ...] = ()
    """Kinds (``Kind.group``) of the sync that no health rule knows: not waited for, listed so
    a user knows to add a rule (Lua, CEL)."""
    children: tuple[Mapping[str, Any], ...] = ()
    """The live objects the applied workloads own (a Deployment's ReplicaSets and their Pods),
    per owner, each with its health: empty for a target without live state (git)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value, "message": self.message,
                               "unhealthy": self.unhealthy,
                               "objects": [dict(o) for o in self.objects]}
        if self.no_rule:
            out["no_rule"] = list(self.no_rule)
        if self.children:
            out["children"] = [dict(c) for c in self.children]
        return out


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did. ``failure`` (a reason code such as ``Degraded``) says it did not
    succeed although nothing went wrong on the way: the rollout is unhealthy. That is an
    outcome (``apply.failed`` with the health), not an exception."""

    changed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    health: HealthResult | None = None
    failure: str | None = None


class Target(Protocol):
    """Somewhere a rendered bundle is applied to: a Git branch, a Kubernetes cluster."""

    description: str

    async def current(self) -> TargetState: ...

    async def apply(self, request: ApplyRequest) -> ApplyResult: ...

    async def has_applied(self, request: ApplyRequest) -> bool:
        """Whether this very request (revision, digest, sequence, epoch) was applied here,
        even if something newer was applied since: how a redelivery after a crash between
        the effect and its record is recognised."""
        ...
