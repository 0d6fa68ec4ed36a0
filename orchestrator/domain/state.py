"""Environment state is a fold of the event log: ``evolve(state, event) -> state``.

Nothing here reads a clock or a store; the same events in the same order always give the same
state, which is what ``conveyor replay`` checks. Like Flux's kustomize-controller we keep the
last *attempted* revision apart from the last *applied* one, so a failing commit never hides
what is really running.

The projection is a handful of *records*, each stored under its own key with the stream
sequence it reflects: an environment's state (``last_seq``), its newest attempts
(``EnvHistory.seq``), a commit's environments, and the position of the whole projection.
:func:`fold_records` is the one rule for folding an event into them; every record skips an
event at or below its own sequence. That makes folding idempotent per record, so a projector
that crashed half-way through writing one event's records and gets it redelivered completes
the missing records without counting anything twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event
from orchestrator.domain.history import EnvHistory
from orchestrator.domain.payloads import (
    BY_TYPE,
    ApplyFields,
    ApplySucceeded,
    CommitDetected,
    HealthFields,
    Payload,
)
from orchestrator.domain.updater import Updater

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
    in_flight_since: str = ""  # when the in-flight operation started
    retries: int = 0  # apply.retrying events of the in-flight operation
    last_failure_id: str = ""  # the latest failed/dead event: what `conveyor retry` takes
    commits_seen: int = 0
    deployments: int = 0
    failures: int = 0
    last_seq: int = 0
    generator: str = ""  # the conveyor.yaml generator that made it ("" when written by hand)

    def to_dict(self) -> dict[str, Any]:
        # every field is a string or a number: no deep copy (``asdict``) needed, and the api
        # lists a thousand of these per page
        return {name: getattr(self, name) for name in self.__slots__}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> EnvState:
        known = {f for f in EnvState.__dataclass_fields__}
        return EnvState(**{k: v for k, v in raw.items() if k in known})


UPDATE_STATE: Final = Updater(EnvState)


def evolve(state: EnvState, event: Event, seq: int = 0,
           payload: Payload | None = None) -> EnvState:
    """Apply one event to an environment's state (``payload``: the event's, when decoded)."""
    changes = _changes(state, event, payload if payload is not None else decode(event))
    if seq > state.last_seq:
        changes["last_seq"] = seq
    in_flight = changes.get("in_flight", state.in_flight)
    if in_flight != state.in_flight:
        changes["in_flight_since"] = event.time if in_flight else ""
        changes["retries"] = 0
    return UPDATE_STATE(state, changes)


def _changes(s: EnvState, event: Event, p: Payload) -> dict[str, Any]:
    """The fields an event changes (applied at once: folds run over whole logs)."""
    rev = event.correlationid
    t = event.type
    if p.retry_of:  # re-published by `conveyor retry`: work again, not a new fact
        if t == ev.COMMIT_DETECTED:
            return {"in_flight": f"render {rev[:7]}"}
        if t != ev.RENDER_SUCCEEDED:
            return {}  # a terminal event handed back to the notifier
    if t == ev.COMMIT_DETECTED:
        env = p.env if isinstance(p, CommitDetected) else None
        made_by = str(env.get("generator", "")) if env is not None else s.generator
        return {"desired_revision": rev, "desired_at": event.time,
                "in_flight": f"render {rev[:7]}", "commits_seen": s.commits_seen + 1,
                "generator": made_by}
    if t in (ev.RENDER_SUCCEEDED, ev.APPLY_STARTED):
        return {"last_attempted_revision": rev, "in_flight": f"apply {rev[:7]}"}
    if isinstance(p, ApplySucceeded) and t == ev.APPLY_SUCCEEDED and p.superseded_by:
        # recognised after a restart, with a newer commit applied since: it was deployed, but
        # the environment holds the newer one
        return {"deployments": s.deployments + 1}
    if t in (ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED):
        return {"last_applied_revision": rev, "last_applied_at": event.time,
                "bundle_digest": (p.digest if isinstance(p, ApplyFields) and p.digest
                                  else s.bundle_digest),
                "last_outcome": t, "last_outcome_at": event.time, "last_error": "",
                "in_flight": _in_flight_after(s, rev), "last_failure_id": "",
                "deployments": s.deployments + (t == ev.APPLY_SUCCEEDED)}
    if t in (ev.RENDER_FAILED, ev.APPLY_FAILED, ev.RENDER_DEAD, ev.APPLY_DEAD,
             ev.COMMIT_REJECTED):
        return {"last_attempted_revision": rev or s.last_attempted_revision,
                "last_outcome": t, "last_outcome_at": event.time,
                "last_error": p.error_text(),
                "in_flight": _in_flight_after(s, rev), "failures": s.failures + 1,
                "last_failure_id": event.id}
    if t == ev.ENV_REMOVED:
        return {"in_flight": "", "last_outcome": t, "last_outcome_at": event.time}
    if t == ev.ENV_PRUNED:
        return {"last_outcome": t, "last_outcome_at": event.time, "bundle_digest": "",
                "last_applied_revision": ""}
    if t == ev.APPLY_RETRYING:
        return {"last_error": p.error_text(), "retries": s.retries + 1}
    if t == ev.APPLY_SUPERSEDED:
        return {} if s.last_outcome else {"last_outcome": t}
    if isinstance(p, HealthFields):
        return {"health": p.status or t.rsplit(".", 1)[1].title(),
                "health_message": p.message}
    return {}


def _in_flight_after(state: EnvState, finished_rev: str) -> str:
    """Clear in-flight work unless a newer commit is already on its way."""
    if state.desired_revision and state.desired_revision != finished_rev:
        return state.in_flight
    return ""


class Records(NamedTuple):
    """The records one event can touch: its environment's state and history, and (for a
    detected commit) the commit's environments with the sequence of their last change.
    (A named tuple: two are made per event folded, at a third of a dataclass's cost.)"""

    state: EnvState
    history: EnvHistory
    commit_envs: tuple[str, ...] = ()
    commit_seq: int = 0


PAYLOAD_TYPES: Final = frozenset({
    ev.COMMIT_DETECTED, ev.COMMIT_REJECTED, ev.RENDER_SUCCEEDED, ev.RENDER_FAILED,
    ev.RENDER_DEAD, ev.APPLY_STARTED, ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED,
    ev.APPLY_SUPERSEDED, ev.APPLY_RETRYING, ev.APPLY_DEAD, ev.ENV_REMOVED, ev.ENV_PRUNED,
    *hist.HISTORY_TYPES,
    *(t for t, cls in BY_TYPE.items() if issubclass(cls, HealthFields)),
})
"""The types whose payload the fold reads. Any other event (a notification, a drift report,
a type this version does not know) only moves its environment's ``last_seq``: it is folded
without decoding its payload (``tests/test_state.py`` holds the two paths equal for every
type)."""


def fold_records(records: Records, event: Event, seq: int) -> Records:
    """Fold one event into the records it touches; each record skips what it already holds."""
    state, history = records.state, records.history
    if event.type not in PAYLOAD_TYPES:
        if seq <= state.last_seq:
            return records
        return records._replace(state=UPDATE_STATE(state, {"last_seq": seq}))
    p = decode(event)  # once for the whole fold
    if seq > state.last_seq:
        state = evolve(state, event, seq, p)
    history = hist.fold(history, event, seq, payload=p)
    envs, cseq = records.commit_envs, records.commit_seq
    if (event.type == ev.COMMIT_DETECTED and event.correlationid and not p.retry_of
            and seq > cseq):
        envs, cseq = tuple(sorted({*envs, event.subject})), seq
    return Records(state, history, envs, cseq)


@dataclass(frozen=True, slots=True)
class Projection:
    """All environments, the commit -> environments map, each environment's newest attempts,
    and the stream position they reflect."""

    envs: dict[str, EnvState] = field(default_factory=dict)
    commits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seq: int = 0
    history: dict[str, EnvHistory] = field(default_factory=dict)
    commit_seqs: dict[str, int] = field(default_factory=dict)


def project(events: Iterable[tuple[int, Event]], start: Projection | None = None) -> Projection:
    """Fold events (stream order, redeliveries allowed) into a projection."""
    envs = dict(start.envs) if start else {}
    commits = {k: tuple(v) for k, v in (start.commits.items() if start else [])}
    history = dict(start.history) if start else {}
    commit_seqs = dict(start.commit_seqs) if start else {}
    seq = start.seq if start else 0
    for s, event in events:
        seq = max(seq, s)
        if event.subject == ev.NO_ENV:
            continue
        name, sha = event.subject, event.correlationid
        detected = event.type == ev.COMMIT_DETECTED and bool(sha)
        before = Records(envs.get(name) or EnvState(name=name),
                         history.get(name) or EnvHistory(),
                         commits.get(sha, ()) if detected else (),
                         commit_seqs.get(sha, 0) if detected else 0)
        after = fold_records(before, event, s)
        envs[name] = after.state
        if after.history is not before.history:
            history[name] = after.history
        if detected and after.commit_seq != before.commit_seq:
            commits[sha], commit_seqs[sha] = after.commit_envs, after.commit_seq
    return Projection(envs, commits, seq, history, commit_seqs)
