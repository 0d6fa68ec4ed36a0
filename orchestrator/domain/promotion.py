"""Promotion gates: may what FROM runs now go to TO? Decided from FROM's events alone.

Pure (the clock is an argument). The rules, in order, each refusal naming its reason:

1. FROM has a deployment: the newest ``apply.succeeded`` / ``apply.skipped`` that is not a
   drift heal. Its revision is what FROM *runs*, and what is promoted.
2. No failed apply since: an ``apply.failed`` / ``apply.dead`` (or ``render.failed`` /
   ``render.dead``: FROM could not take a newer commit) after that deployment refuses.
3. Healthy for the soak time (``promotion.<to>.after.healthyFor``). Healthy *since* is the
   first ``health.healthy`` after the deployment with no other verdict after it; the last
   verdict must be healthy. An environment whose target reports no health at all (a git
   target) counts as healthy from its deployment on: there is nothing else to wait for.

``auto`` promotion fires once per FROM revision: ``already_promoted`` tells from TO's events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event
from orchestrator.domain.history import HEALTH_TYPES, is_heal
from orchestrator.domain.payloads import HealthFields, PromotionCommitted
from orchestrator.domain.trace import parse_time

DEPLOYED = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED})
FAILED = frozenset({ev.APPLY_FAILED, ev.APPLY_DEAD, ev.RENDER_FAILED, ev.RENDER_DEAD})
GATE_STAGES = ("conveyor.render", "conveyor.apply", "conveyor.health")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    revision: str = ""  # what FROM runs ("" when it runs nothing)
    healthy_since: str = ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def check(source: str, events: Sequence[Event], *, soak: float, now: datetime) -> Verdict:
    """The gates of promoting from ``source``, given its events in stream order."""
    mine = [e for e in events if e.subject == source]
    deployed = next((i for i in range(len(mine) - 1, -1, -1)
                     if mine[i].type in DEPLOYED and not is_heal(mine[i])), None)
    if deployed is None:
        return Verdict(False, f"{source} has no deployment to promote")
    applied = mine[deployed]
    revision = applied.correlationid
    after = mine[deployed + 1:]
    failed = next((e for e in after if e.type in FAILED), None)
    if failed is not None:
        return Verdict(False, f"{source} has a failure since it deployed {revision[:7]}: "
                              f"{failed.type.removeprefix('conveyor.')} of "
                              f"{failed.correlationid[:7]} at {failed.time[:19]}", revision)
    verdicts = [e for e in after if e.type in HEALTH_TYPES
                and e.correlationid in ("", revision)]
    reports_health = any(e.type in HEALTH_TYPES for e in mine)
    if verdicts:
        last = verdicts[-1]
        if last.type != ev.HEALTH_HEALTHY:
            verdict = decode(last)
            status = (verdict.status if isinstance(verdict, HealthFields) else "") or \
                last.type.rsplit(".", 1)[1]
            return Verdict(False, f"{source} is {status} on {revision[:7]} (since "
                                  f"{last.time[:19]})", revision)
        since = last
        for e in reversed(verdicts):
            if e.type != ev.HEALTH_HEALTHY:
                break
            since = e
        since_time = since.time
    elif reports_health:
        return Verdict(False, f"{source} has no health verdict on {revision[:7]} yet", revision)
    else:
        since_time = applied.time
    start = parse_time(since_time)
    if start is None:
        return Verdict(False, f"{source}: unreadable event time {since_time!r}", revision)
    healthy = (now - start).total_seconds()
    if healthy < soak:
        return Verdict(False, f"{source} has been healthy on {revision[:7]} for "
                              f"{_duration(healthy)} of the {_duration(soak)} required",
                       revision, since_time)
    return Verdict(True, f"{source} healthy on {revision[:7]} for {_duration(healthy)}",
                   revision, since_time)


def already_promoted(to: str, source: str, revision: str, events: Sequence[Event]) -> bool:
    """Did ``to`` already receive ``source``'s ``revision`` (committed or proposed, by hand or
    automatically)? An automatic promotion fires once per revision."""
    def promoted(e: Event) -> bool:
        p = decode(e) if e.subject == to else None
        return isinstance(p, PromotionCommitted) and p.from_env == source \
            and p.revision == revision

    return any(promoted(e) for e in events)
