"""The one builder of apply outcomes, for the applier's consumer and the drift loop's heal.

An outcome carries the input's commit fields (``PASS_ON``), what the target did, the target's
description and ``duration_ms``. Every terminal outcome of one input shares one id
(``one_per_cause``): when a crash lets a redelivered render be handled again (say superseded
after it already succeeded), JetStream keeps the first outcome and drops the second. A target
that reports health adds a ``conveyor.health.*`` event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from orchestrator.domain import events as ev
from orchestrator.domain.codec import build, carry
from orchestrator.domain.events import Event, new_event, outcome_id
from orchestrator.domain.payloads import BY_TYPE
from orchestrator.ports import ApplyResult, Target
from orchestrator.targets.kube.health import health_event

PASS_ON: Final = ("revision", "short", "message", "author", "committed_at", "branch", "source",
                  "repo", "digest", "objects", "origin_seq")
OUTCOMES: Final = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED,
                             ev.APPLY_SUPERSEDED})


def pass_on(event: Event) -> dict[str, Any]:
    return carry(event, PASS_ON)


def elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def one_per_cause(outcome: Event) -> Event:
    """Every outcome type of one cause gets the same id (see the module doc)."""
    return replace(outcome, id=outcome_id("apply", outcome.subject, outcome.causationid))


def outcome(kind: str, cause: Event, *, source: str, started: float,
            target: Target | None = None, data: Mapping[str, Any] | None = None,
            carry: Mapping[str, Any] | None = None) -> Event:
    """``kind`` (an apply outcome, or ``environment.pruned``) for ``cause``: ``data`` added to
    ``carry`` (default: the input's commit fields, ``pass_on``)."""
    base = pass_on(cause) if carry is None else dict(carry)
    body = {**base, **(data or {}), "duration_ms": elapsed_ms(started)}
    if target is not None:
        body["target"] = target.description
    made = new_event(kind, env=cause.subject, cause=cause, source=source,
                     data=build(BY_TYPE[kind], **body))
    # retrying and health events are not outcomes; every terminal outcome shares one id
    return one_per_cause(made) if kind in OUTCOMES else made


def for_result(cause: Event, result: ApplyResult, *, source: str, started: float,
               target: Target, health_under_outcome: bool = False,
               carry: Mapping[str, Any] | None = None,
               summary_prefix: str = "") -> tuple[bool, list[Event]]:
    """(succeeded, events) for what ``target.apply`` returned: ``apply.failed`` for an
    unhealthy rollout, else ``apply.succeeded`` or ``apply.skipped``; then the health event,
    caused by ``cause`` (the applier: verdict and outcome are siblings under the render) or,
    with ``health_under_outcome``, by the outcome (the drift loop: under the heal)."""
    if result.failure is not None:
        kind = ev.APPLY_FAILED
        body = {**result.details, "error": result.summary, "reason": result.failure}
    else:
        kind = ev.APPLY_SUCCEEDED if result.changed else ev.APPLY_SKIPPED
        body = {**result.details, "summary": summary_prefix + result.summary}
    done = outcome(kind, cause, source=source, started=started, target=target, data=body,
                   carry=carry)
    events = [done]
    if result.health is not None:
        events.append(health_event(done if health_under_outcome else cause, result.health,
                                   source))
    return result.failure is None, events
