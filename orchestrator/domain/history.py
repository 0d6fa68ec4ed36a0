"""Deployment history: every attempt to deploy a commit to an environment, folded from events.

An *attempt* is one environment's handling of one source commit: it opens with
``commit.detected`` and moves through render and apply to an outcome: ``succeeded``,
``skipped`` (the target already held the bundle), ``failed``, ``render-failed``,
``superseded`` (a newer commit won), ``dead`` (retries exhausted) or ``rejected``. A health
verdict after the apply is recorded on the attempt it judges. While an attempt is open its
outcome says where it is: ``rendering``, ``applying``, ``retrying``.

A drift heal (``apply.*`` with ``data.cause = "drift"``, published by the applier's drift loop)
is an attempt of its own with ``cause = "drift"``: it re-applies what already ran, so it never
rewrites the commit's attempt, and DORA does not count it as a change.

A dead letter or failure retried with ``conveyor retry`` re-publishes the stage's input with
``data.retry_of``; that *reopens* the attempt (``attempts`` counts them) instead of opening a
new one. Terminal events re-published only for the notifier change nothing here.

Two views share one rule (:func:`locate` + :func:`advance`):

- :func:`fold` keeps the newest ``HISTORY_KEPT`` attempts of one environment, with the stream
  sequence they reflect: the projector stores this in the state bucket (``history.<env>``) for
  dashboards; it is idempotent under redelivery (an event at or below ``seq`` is skipped).
- :func:`build` folds a whole event sequence with no cap: ``conveyor history`` reads the
  environment's events from the stream, so history reaches back as far as the stream's
  retention and no further.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.payloads import (
    ApplyFields,
    ApplySuperseded,
    CommitFields,
    DeadLetter,
    HealthFields,
    Payload,
    RenderFailed,
    RenderSucceeded,
)
from orchestrator.domain.trace import parse_time
from orchestrator.domain.updater import Updater

HISTORY_KEPT: Final = 20
MESSAGE_MAX: Final = 200
ERROR_MAX: Final = 1000

# outcomes
RENDERING: Final = "rendering"
APPLYING: Final = "applying"
RETRYING: Final = "retrying"
SUCCEEDED: Final = "succeeded"
SKIPPED: Final = "skipped"
FAILED: Final = "failed"
RENDER_FAILED: Final = "render-failed"
SUPERSEDED: Final = "superseded"
DEAD: Final = "dead"
REJECTED: Final = "rejected"
FINISHED: Final = frozenset({SUCCEEDED, SKIPPED, FAILED, RENDER_FAILED, SUPERSEDED, DEAD,
                             REJECTED})
FAILURES: Final = frozenset({FAILED, RENDER_FAILED, DEAD})

HEALTH_TYPES: Final = frozenset({ev.HEALTH_HEALTHY, ev.HEALTH_DEGRADED, ev.HEALTH_PROGRESSING})
HISTORY_TYPES: Final = frozenset({
    ev.COMMIT_DETECTED, ev.COMMIT_REJECTED, ev.RENDER_SUCCEEDED, ev.RENDER_FAILED,
    ev.RENDER_DEAD, ev.APPLY_STARTED, ev.APPLY_RETRYING, ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED,
    ev.APPLY_FAILED, ev.APPLY_SUPERSEDED, ev.APPLY_DEAD, *HEALTH_TYPES,
})
# a retried stage input (see ``retry_of``) reopens the attempt; these are the stage inputs
REOPENERS: Final = frozenset({ev.COMMIT_DETECTED, ev.RENDER_SUCCEEDED})


# Each function below takes the event's decoded payload when the caller has it (a fold decodes
# every event once); without it, it decodes the event itself.

def is_retry(event: Event, payload: Payload | None = None) -> bool:
    """A re-published stage input (``conveyor retry``), not a new fact."""
    return bool((payload if payload is not None else decode(event)).retry_of)


def counts(event: Event, payload: Payload | None = None) -> bool:
    """Does this event take part in deployment history?"""
    if event.subject == ev.NO_ENV or event.type not in HISTORY_TYPES:
        return False
    # a terminal event re-published for the notifier is not a second outcome
    return not (is_retry(event, payload) and event.type not in REOPENERS)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One environment's handling of one commit, from detection to outcome."""

    env: str
    revision: str
    short: str = ""
    author: str = ""
    message: str = ""
    committed_at: str = ""
    started_at: str = ""  # time of the first event (commit detected)
    finished_at: str = ""
    outcome: str = RENDERING
    stage: str = "render"  # where it is or where it ended: render / apply
    error: str = ""
    digest: str = ""
    objects: int | None = None
    retries: int = 0  # apply.retrying events (transient failures retried by the applier)
    attempts: int = 1  # 1 + retries of dead letters / failures (``conveyor retry``)
    superseded_by: str = ""
    health: str = ""  # last health verdict after the apply
    degraded_at: str = ""
    recovered_at: str = ""  # healthy again after degraded
    render_ms: float | None = None
    apply_ms: float | None = None
    duration_ms: float | None = None  # started_at -> finished_at
    outcome_event: str = ""  # id of the event that decided the outcome (retry it if failed)
    cause: str = "commit"  # "commit", or "drift" for a self-heal
    first_seq: int = 0
    last_seq: int = 0

    @property
    def finished(self) -> bool:
        return self.outcome in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Attempt:
        known = Attempt.__dataclass_fields__
        return Attempt(**{k: v for k, v in raw.items() if k in known})


UPDATE_ATTEMPT: Final = Updater(Attempt)


@dataclass(frozen=True, slots=True)
class EnvHistory:
    """The newest attempts of one environment and the stream sequence they reflect."""

    entries: tuple[Attempt, ...] = ()
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "entries": [a.to_dict() for a in self.entries]}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> EnvHistory:
        return EnvHistory(tuple(Attempt.from_dict(a) for a in raw.get("entries") or []),
                          int(raw.get("seq") or 0))


def is_heal(event: Event, payload: Payload | None = None) -> bool:
    p = payload if payload is not None else decode(event)
    return isinstance(p, ApplyFields) and p.cause == "drift"


def opens_new(event: Event, payload: Payload | None = None) -> bool:
    """A detected commit always opens a new attempt (unless it is a retried one); so does a
    drift heal."""
    p = payload if payload is not None else decode(event)
    return (event.type == ev.COMMIT_DETECTED and not is_retry(event, p)) or is_heal(event, p)


def locate(entries: Sequence[Attempt], event: Event,
           payload: Payload | None = None) -> int | None:
    """Index of the attempt this event belongs to; None when it opens a new one.

    The newest attempt with the event's revision; a health verdict without a revision judges
    the newest applied attempt.
    """
    if opens_new(event, payload):
        return None
    rev = event.correlationid
    for i in range(len(entries) - 1, -1, -1):
        e = entries[i]
        if rev and e.revision == rev:
            return i
        if not rev and event.type in HEALTH_TYPES and e.outcome in (SUCCEEDED, SKIPPED):
            return i
    return None


def advance(entry: Attempt | None, event: Event, seq: int,
            payload: Payload | None = None) -> Attempt | None:
    """The attempt after ``event`` (``entry`` None: a new one); None when nothing is recorded."""
    p = payload if payload is not None else decode(event)
    if not counts(event, p):
        return None
    if entry is None:
        if event.type in HEALTH_TYPES:
            return None  # a verdict about an attempt we no longer hold
        entry = Attempt(env=event.subject, revision=event.correlationid, started_at=event.time,
                        first_seq=seq, cause="drift" if is_heal(event, p) else "commit")
    # applied at once: folds run over whole logs
    changes: dict[str, Any] = {"last_seq": max(entry.last_seq, seq)}
    if not entry.author and isinstance(p, CommitFields) and p.has_commit():
        changes.update(_commit_info(entry, p))
    if p.retry_of:  # a dead letter or failure handed back to its stage: reopen
        changes.update(attempts=entry.attempts + 1, finished_at="", duration_ms=None, error="",
                       outcome_event="")
    changes.update(_outcome_changes(entry, event, p))
    return UPDATE_ATTEMPT(entry, changes)


def _outcome_changes(entry: Attempt, event: Event, p: Payload) -> dict[str, Any]:
    t = event.type
    if t == ev.COMMIT_DETECTED:
        return {"outcome": RENDERING, "stage": "render"}
    if isinstance(p, RenderSucceeded):
        return {"outcome": APPLYING, "stage": "apply",
                "digest": p.digest or entry.digest,
                "objects": p.objects if "objects" in event.data else entry.objects,
                "render_ms": _ms(p.duration_ms, entry.render_ms)}
    if t == ev.APPLY_STARTED:
        return {"outcome": APPLYING, "stage": "apply"}
    if t == ev.APPLY_RETRYING:
        return {"outcome": RETRYING, "stage": "apply", "retries": entry.retries + 1,
                "error": _error(p)}
    if isinstance(p, RenderFailed):
        return _finish(entry, event, RENDER_FAILED, "render", error=_error(p),
                       render_ms=_ms(p.duration_ms, entry.render_ms))
    if t == ev.RENDER_DEAD:
        return _finish(entry, event, DEAD, "render", error=_error(p))
    duration = p.duration_ms if isinstance(p, ApplyFields) else None
    if t in (ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED):
        return _finish(entry, event, SUCCEEDED if t == ev.APPLY_SUCCEEDED else SKIPPED, "apply",
                       error="", apply_ms=_ms(duration, entry.apply_ms))
    if t == ev.APPLY_FAILED:
        return _finish(entry, event, FAILED, "apply", error=_error(p),
                       apply_ms=_ms(duration, entry.apply_ms))
    if isinstance(p, ApplySuperseded):
        return _finish(entry, event, SUPERSEDED, "apply", superseded_by=p.superseded_by)
    if t == ev.APPLY_DEAD:
        return _finish(entry, event, DEAD, "apply", error=_error(p))
    if t == ev.COMMIT_REJECTED:
        return _finish(entry, event, REJECTED, "render", error=_error(p))
    # health verdicts
    status = (p.status if isinstance(p, HealthFields) else "") or t.rsplit(".", 1)[1].title()
    if t == ev.HEALTH_DEGRADED:
        return {"health": status, "degraded_at": entry.degraded_at or event.time,
                "error": _error(p) or entry.error}
    if t == ev.HEALTH_HEALTHY and entry.degraded_at and not entry.recovered_at:
        return {"health": status, "recovered_at": event.time}
    return {"health": status}


def fold(history: EnvHistory, event: Event, seq: int, keep: int = HISTORY_KEPT,
         payload: Payload | None = None) -> EnvHistory:
    """One event into an environment's newest attempts (skipped when ``seq`` was folded)."""
    if seq <= history.seq or event.subject == ev.NO_ENV or event.type not in HISTORY_TYPES:
        return history
    p = payload if payload is not None else decode(event)
    if not counts(event, p):
        return history
    entries = history.entries
    i = locate(entries, event, p)
    new = advance(entries[i] if i is not None else None, event, seq, p)
    if new is None:
        return history
    if i is None:
        kept = (*entries, new)[-keep:] if keep > 0 else (*entries, new)
    else:
        kept = (*entries[:i], new, *entries[i + 1:])
    return EnvHistory(kept, seq)


@dataclass
class _Builder:
    entries: list[Attempt] = field(default_factory=list)
    latest: dict[str, int] = field(default_factory=dict)  # revision -> index of newest attempt
    seq: int = 0


def build(events: Iterable[tuple[int, Event]]) -> dict[str, list[Attempt]]:
    """Every attempt of every environment in ``events`` (stream order), oldest first. No cap."""
    envs: dict[str, _Builder] = {}
    for seq, event in events:
        if not counts(event):
            continue
        b = envs.setdefault(event.subject, _Builder())
        if seq <= b.seq:
            continue  # a redelivered event
        b.seq = seq
        # the same rule as locate(), with an index instead of a scan
        if opens_new(event):
            i: int | None = None
        elif event.correlationid:
            i = b.latest.get(event.correlationid)
        else:
            i = locate(b.entries, event)  # rare: a verdict without a revision
        new = advance(b.entries[i] if i is not None else None, event, seq)
        if new is None:
            continue
        if i is None:
            b.entries.append(new)
            i = len(b.entries) - 1
        else:
            b.entries[i] = new
        if new.revision:
            b.latest[new.revision] = max(i, b.latest.get(new.revision, -1))
    return {env: b.entries for env, b in envs.items()}


def _finish(entry: Attempt, event: Event, outcome: str, stage: str,
            **changes: Any) -> dict[str, Any]:
    return {"outcome": outcome, "stage": stage, "finished_at": event.time,
            "duration_ms": _between(entry.started_at, event.time), "outcome_event": event.id,
            **changes}


def _commit_info(entry: Attempt, p: CommitFields) -> dict[str, Any]:
    """The commit's details, from the first event that carries them."""
    message = p.message.strip().splitlines()
    return {"short": p.short or entry.revision[:7], "author": p.author,
            "message": message[0][:MESSAGE_MAX] if message else "",
            "committed_at": p.committed_at}


def _error(p: Payload) -> str:
    return p.error_text()[:ERROR_MAX]


def _ms(value: Any, default: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) else default


def _between(start: str, end: str) -> float | None:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return None
    return round((b - a).total_seconds() * 1000, 1)


# -- retrying dead letters and failures (``conveyor retry``) ------------------------------------
class NotRetryable(ValueError):
    """The event is not a dead letter or a failure, or carries nothing to retry."""


def is_dead(event: Event) -> bool:
    return event.outcome == "dead"


def is_failed(event: Event) -> bool:
    return event.outcome == "failed"


def dead_original(dead: Event) -> Event:
    """The stage input a ``conveyor.<stage>.dead`` event carries."""
    p = decode(dead)
    raw = p.original if isinstance(p, DeadLetter) else None
    if not isinstance(raw, dict) or "type" not in raw or "id" not in raw:
        raise NotRetryable(f"dead letter {dead.id} carries no original event")
    return Event.from_dict(raw)


def retry_of(target: Event, original: Event, n: int) -> Event:
    """The original stage input again, as a new event the stage's consumer handles anew.

    Its id derives from the dead/failed event and the retry number (``retry:<id>:<n>``), so a
    retry request that is itself repeated publishes once; causation is the dead/failed event,
    so the trace shows the retry under it.
    """
    if not (is_dead(target) or is_failed(target)):
        raise NotRetryable(f"event {target.id} is a {target.type}, not a dead letter or failure")
    return new_event(original.type, env=original.subject, cause=target,
                     correlation=original.correlationid, source="conveyor/retry",
                     key=f"retry:{target.id}:{n}",
                     data={**original.data, "retry_of": target.id, "retry": n,
                           "original_id": original.id})
