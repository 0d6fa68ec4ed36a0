"""What a GitOps action returns or refuses with, and the surface the actions build on.

Below ``workflow`` (``GitOps``) and ``promote`` both, so neither imports the other back:
``Result``, ``Refused``, ``BranchProtected``, the writable branch (``Repo``), an ``Edit`` of
the declaration, and ``Actions``, the part of ``GitOps`` a promotion uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.config import Config, EnvironmentConfig
from orchestrator.domain.events import Event
from orchestrator.errors import PermanentError
from orchestrator.gitops.forge import PullRequest
from orchestrator.targets.git.push import PushMirror


@dataclass(frozen=True, slots=True)
class Result:
    """What an action did: the commit it pushed (or proposed) and the event it published."""

    action: str
    env: str
    via: str
    changed: bool
    commit: str | None
    parent: str | None
    branch: str
    attempts: int = 1
    files: tuple[str, ...] = ()
    pull_request: PullRequest | None = None
    event: Event | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "env": self.env, "via": self.via,
                "changed": self.changed, "commit": self.commit, "parent": self.parent,
                "branch": self.branch, "attempts": self.attempts, "files": list(self.files),
                "pull_request": self.pull_request.to_dict() if self.pull_request else None,
                "event": self.event.id if self.event else None, **self.detail}


class BranchProtected(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="BranchProtected")


class Refused(PermanentError):
    """The action is not allowed now (a gate, a revision that never deployed)."""

    def __init__(self, message: str, *, reason: str = "Refused") -> None:
        super().__init__(message, reason=reason)


@dataclass(frozen=True, slots=True)
class Repo:
    """A writable branch and where it came from (never a secret)."""

    mirror: PushMirror
    url: str
    source: str


# a change of the declaration at a head: (mirror path, head) -> (files written, tree) or None
Edit = Callable[[Path, str], tuple[list[str], str] | None]


class Actions(Protocol):
    """What ``orchestrator.gitops.promote`` needs of ``GitOps``."""

    bus: EventBus
    source: str

    async def primary(self) -> Repo: ...

    async def config(self, repo: Repo) -> Config: ...

    async def repo_for(self, primary: Repo, config: Config,
                       env: EnvironmentConfig) -> Repo: ...

    async def gate_events(self, env: str) -> list[Event]: ...

    async def write(self, repo: Repo, edit: Edit, message: str, *, via: str, action: str,
                    env: str) -> tuple[bool, str | None, str | None, int, list[str],
                                       PullRequest | None]: ...

    async def publish(self, kind: str, env: str, commit: str, data: dict[str, Any],
                      cause: Event | None = None) -> Event: ...
