"""Which revision a rollback restores: one that deployed to the environment before.

Pure: it decides from the environment's deployment attempts (``history.build`` over the log).
A revision *deployed* when its attempt ended ``succeeded`` or ``skipped`` (the target already
held its bundle); drift heals are not deployments. ``--steps N`` counts back by what ran: the
Nth deployment before the current one whose bundle digest differs from the one after it, so
commits that changed nothing this environment renders are not steps (Argo CD's history is by
sync, which is the same thing).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.domain.history import SKIPPED, SUCCEEDED, Attempt
from orchestrator.errors import PermanentError


class RollbackRefused(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="RollbackRefused")


def deployments(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Attempts that deployed, oldest first."""
    return [a for a in attempts if a.outcome in (SUCCEEDED, SKIPPED) and a.cause == "commit"]


def choose(env: str, attempts: Sequence[Attempt], *, to: str = "", steps: int = 0) -> Attempt:
    """The deployment to restore: ``to`` (a full or abbreviated SHA) or ``steps`` back
    (default 1). Refused, with the reason, when there is none."""
    done = deployments(attempts)
    if not done:
        raise RollbackRefused(f"{env} has no deployment in the event log: nothing to roll "
                              "back to")
    if to and steps:
        raise RollbackRefused("give --to SHA or --steps N, not both")
    if to:
        wanted = to.strip().lower()
        if len(wanted) < 4:
            raise RollbackRefused(f"--to {to!r}: give at least 4 characters of the SHA")
        for attempt in reversed(done):
            if attempt.revision.startswith(wanted):
                return attempt
        recent = ", ".join(a.revision[:7] for a in reversed(done[-5:]))
        raise RollbackRefused(f"{to} never deployed to {env} (its last deployments: "
                              f"{recent}); a rollback restores only what ran there")
    if steps < 0:
        raise RollbackRefused("--steps must be at least 1")
    wanted_steps = steps or 1
    current = done[-1]
    seen = current.digest
    back = 0
    for attempt in reversed(done[:-1]):
        if attempt.digest and attempt.digest == seen:
            continue
        back += 1
        seen = attempt.digest
        if back == wanted_steps:
            return attempt
    raise RollbackRefused(f"{env} has {back} earlier deployment(s) that ran something else "
                          f"than {current.revision[:7]}; --steps {wanted_steps} reaches past "
                          "them")
