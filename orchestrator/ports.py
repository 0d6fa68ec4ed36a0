"""Protocols the services depend on; adapters implement them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    env: str
    revision: str
    digest: str
    objects: Sequence[dict[str, Any]]
    origin_seq: int  # stream sequence of the commit event: orders applies in one environment
    message: str = ""  # commit subject, for the target's own records
    cause: str = ""  # "commit" or "drift"
    epoch: str = ""  # the event log's epoch (nats_schema): recorded with the target's state


@dataclass(frozen=True, slots=True)
class TargetState:
    """What a target holds now, as far as Conveyor is concerned."""

    digest: str | None
    revision: str | None
    origin_seq: int | None  # meaningful only within the log of ``epoch``
    epoch: str | None = None  # None: written before epochs were recorded (or never written)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    changed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


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
