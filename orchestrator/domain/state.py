"""Environment state is a fold of the event log: ``evolve(state, event) -> state``.

Nothing here reads a clock or a store; the same events in the same order always give the same
state, which is what ``conveyor replay`` checks. Like Flux's kustomize-controller we keep the
last *attempted* revision apart from the last *applied* one, so a failing commit never hides
what is really running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event

HISTORY_OUTCOMES = frozenset({
    ev.APPLY_SUCCEEDED, ev.APPLY_FAILED, ev.APPLY_SKIPPED, ev.APPLY_SUPERSEDED, ev.APPLY_DEAD,
    ev.RENDER_FAILED, ev.RENDER_DEAD, ev.COMMIT_REJECTED,
})


@dataclass(frozen=True, slots=True)
class EnvState:
    name: str
    desired_revision: str = ""
    desired_at: str = ""
    last_attempted_revision: str = ""
    last_applied_revision: str = ""
    last_applied_at: str = ""
    bundle_digest: str = ""
    health: str = "Unknown"
    health_message: str = ""
    last_outcome: str = ""
    last_outcome_at: str = ""
    last_error: str = ""
    in_flight: str = ""  # "render <sha>" / "apply <sha>" / ""
    commits_seen: int = 0
    deployments: int = 0
    failures: int = 0
    last_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> EnvState:
        known = {f for f in EnvState.__dataclass_fields__}
        return EnvState(**{k: v for k, v in raw.items() if k in known})


def evolve(state: EnvState, event: Event, seq: int = 0) -> EnvState:
    """Apply one event to an environment's state."""
    rev = event.correlationid
    t = event.type
    s = replace(state, last_seq=max(state.last_seq, seq))
    if t == ev.COMMIT_DETECTED:
        return replace(s, desired_revision=rev, desired_at=event.time,
                       in_flight=f"render {rev[:7]}", commits_seen=s.commits_seen + 1)
    if t == ev.RENDER_SUCCEEDED:
        return replace(s, last_attempted_revision=rev, in_flight=f"apply {rev[:7]}")
    if t == ev.APPLY_STARTED:
        return replace(s, last_attempted_revision=rev, in_flight=f"apply {rev[:7]}")
    if t in (ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED):
        done = _in_flight_after(s, rev)
        return replace(s, last_applied_revision=rev, last_applied_at=event.time,
                       bundle_digest=str(event.data.get("digest", s.bundle_digest)),
                       last_outcome=t, last_outcome_at=event.time, last_error="", in_flight=done,
                       deployments=s.deployments + (t == ev.APPLY_SUCCEEDED))
    if t in (ev.RENDER_FAILED, ev.APPLY_FAILED, ev.RENDER_DEAD, ev.APPLY_DEAD,
             ev.COMMIT_REJECTED):
        return replace(s, last_attempted_revision=rev or s.last_attempted_revision,
                       last_outcome=t, last_outcome_at=event.time,
                       last_error=str(event.data.get("error") or event.data.get("reason") or ""),
                       in_flight=_in_flight_after(s, rev), failures=s.failures + 1)
    if t == ev.APPLY_RETRYING:
        return replace(s, last_error=str(event.data.get("error", "")))
    if t == ev.APPLY_SUPERSEDED:
        return replace(s, last_outcome=t if s.last_outcome == "" else s.last_outcome)
    if t in (ev.HEALTH_HEALTHY, ev.HEALTH_DEGRADED, ev.HEALTH_PROGRESSING):
        return replace(s, health=str(event.data.get("status", t.rsplit(".", 1)[1].title())),
                       health_message=str(event.data.get("message", "")))
    return s


def _in_flight_after(state: EnvState, finished_rev: str) -> str:
    """Clear in-flight work unless a newer commit is already on its way."""
    if state.desired_revision and state.desired_revision != finished_rev:
        return state.in_flight
    return ""


@dataclass(frozen=True, slots=True)
class Projection:
    """All environments, the commit -> environments map, and the stream position they reflect."""

    envs: dict[str, EnvState] = field(default_factory=dict)
    commits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seq: int = 0


def project(events: Iterable[tuple[int, Event]], start: Projection | None = None) -> Projection:
    envs = dict(start.envs) if start else {}
    commits = {k: tuple(v) for k, v in (start.commits.items() if start else [])}
    seq = start.seq if start else 0
    for s, event in events:
        seq = max(seq, s)
        if event.subject == ev.NO_ENV:
            continue
        env = envs.get(event.subject) or EnvState(name=event.subject)
        envs[event.subject] = evolve(env, event, s)
        if event.type == ev.COMMIT_DETECTED and event.correlationid:
            known = commits.get(event.correlationid, ())
            if event.subject not in known:
                commits[event.correlationid] = (*known, event.subject)
    return Projection(envs, commits, seq)
