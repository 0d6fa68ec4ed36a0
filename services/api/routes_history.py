"""api routes: deployment history, DORA metrics, replay and dead-letter retry.

- ``GET /api/v1/environments/{name}/history[?limit=N]``: every attempt, newest first, folded
  from the environment's events in the stream (no cap but the stream's retention).
- ``GET /api/v1/metrics/dora[?window=30d&env=NAME]``: the four keys per environment.
- ``POST /api/v1/replay`` (control): rebuild the projection from the log in memory
  and compare it with the live one at the same sequence.
- ``POST /api/v1/events/{id}/retry`` (control): hand a dead letter's original event (or a
  failure's cause) back to its stage as a new event.

Events are found by id by scanning the stream, dead and failed events first (a server-side
subject filter: ``conveyor.events.*.*.dead|failed``, a small part of the log). A KV index of
every event id would cost a write per event, forever, for an operation people run by hand;
only the error path (an id that is not a dead letter or failure) scans the whole log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.commands.replay import ReplayError
from orchestrator.commands.replay import replay as run_replay
from orchestrator.domain import dora
from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event
from orchestrator.domain.payloads import CommitFields
from services.api.context import BUS, PROJECTOR, control

_EVENT_ID = re.compile(r"^[0-9a-f]{8,64}$")
HISTORY_STAGES = ("conveyor.commit", "conveyor.render", "conveyor.apply", "conveyor.health")
RETRYABLE_FILTERS = (f"{subjects.PREFIX}.*.*.dead", f"{subjects.PREFIX}.*.*.failed")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_attempts(bus: EventBus, env: str | None) -> dict[str, list[hist.Attempt]]:
    """Every attempt (of one environment, or all) folded from the stream; oldest first."""
    envs = [env] if env else None
    filters = [f for stage in HISTORY_STAGES for f in subjects.filter_for(stage, envs)]
    return hist.build([(s.seq, s.event) async for s in bus.read(filters)])


async def find_event(bus: EventBus, event_id: str, filters: Sequence[str] | None = None,
                     upto: int | None = None) -> StoredEvent | None:
    found: StoredEvent | None = None
    async for stored in bus.read(filters):  # read to the end: leaves no consumer behind
        if found is None and stored.event.id == event_id and (upto is None or stored.seq <= upto):
            found = stored
    return found


async def history(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not subjects.valid_env_name(name):
        return _error(400, f"invalid environment name {name!r}")
    raw = request.query.get("limit", "0") or "0"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return _error(400, "limit must be a non-negative integer")
    limit = int(raw)
    attempts = (await read_attempts(request.app[BUS], name)).get(name, [])
    if not attempts and name not in request.app[PROJECTOR].envs:
        return _error(404, f"no such environment {name!r}")
    newest = attempts[::-1][:limit] if limit > 0 else attempts[::-1]
    actions = await gitops_actions(request.app[BUS], name)
    merges = await merges_of(request.app[BUS], name) if actions else {}
    return web.json_response({"environment": name, "total": len(attempts),
                              "attempts": [{**a.to_dict(), **marked(a.revision, actions,
                                                                    merges)}
                                           for a in newest]})


GITOPS_STAGES = ("conveyor.release", "conveyor.rollback", "conveyor.promotion")
GITOPS_MADE = MappingProxyType({
    ev.RELEASE_COMMITTED: "release", ev.ROLLBACK_COMMITTED: "rollback",
    ev.PROMOTION_COMMITTED: "promotion", ev.RELEASE_PROPOSED: "release",
    ev.ROLLBACK_PROPOSED: "rollback", ev.PROMOTION_PROPOSED: "promotion"})
# A proposed commit deploys itself when its pull request is merged by fast-forward; merged
# with a merge commit of its own, the merge commit deploys, and it is marked with the action
# of the proposed commit it merged (``merged``: that commit), from ``commit.detected``'s
# ``merged`` parents. (A squash or rebase merge makes a new commit that names nothing of the
# pull request's: it is an ordinary commit.)


async def merges_of(bus: EventBus, env: str) -> dict[str, tuple[str, ...]]:
    """The merge commits detected for the environment: revision -> the parents it merged."""
    out: dict[str, tuple[str, ...]] = {}
    async for stored in bus.read(subjects.filter_for(ev.COMMIT_DETECTED, [env])):
        payload = decode(stored.event)
        if isinstance(payload, CommitFields) and payload.merged:
            out[stored.event.correlationid] = payload.merged
    return out


def marked(revision: str, actions: dict[str, dict[str, str]],
           merges: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """What Conveyor made of this revision: its own action, or the action of the proposed
    commit this merge commit merged."""
    if revision in actions:
        return actions[revision]
    for parent in merges.get(revision, ()):
        if parent in actions:
            return {**actions[parent], "merged": parent}
    return {}


async def gitops_actions(bus: EventBus, env: str) -> dict[str, dict[str, str]]:
    """Commits Conveyor made for the environment (release, rollback, promotion), by commit:
    the history marks the attempts that deployed them."""
    filters = [f for stage in GITOPS_STAGES for f in subjects.filter_for(stage, [env])]
    out: dict[str, dict[str, str]] = {}
    async for stored in bus.read(filters):
        action = GITOPS_MADE.get(stored.event.type)
        if action is not None:
            data = stored.event.data
            out[stored.event.correlationid] = {"action": action, **(
                {"rolled_back_to": str(data.get("to") or "")} if action == "rollback" else {}),
                **({"promoted_from": str(data.get("from") or "")}
                   if action == "promotion" else {})}
    return out


async def metrics_dora(request: web.Request) -> web.Response:
    window_text = request.query.get("window", "30d")
    try:
        window = dora.parse_duration(window_text)
    except ValueError as exc:
        return _error(400, str(exc))
    if window.total_seconds() <= 0:
        return _error(400, "window must be positive")
    env = request.query.get("env") or None
    if env is not None and not subjects.valid_env_name(env):
        return _error(400, f"invalid environment name {env!r}")
    now = datetime.now(UTC)
    found = dora.compute(await read_attempts(request.app[BUS], env), now=now, window=window)
    return web.json_response({"window": window_text, "now": now.isoformat(),
                              "environments": [m.to_dict() for m in found]})


@control
async def replay(request: web.Request) -> web.Response:
    try:
        report = await run_replay(request.app[BUS], lock=request.app[PROJECTOR].folding)
    except ReplayError as exc:
        return _error(503, str(exc))
    return web.json_response(report.to_dict())


@control
async def retry(request: web.Request) -> web.Response:
    bus = request.app[BUS]
    event_id = request.match_info["id"]
    if not _EVENT_ID.match(event_id):
        return _error(404, f"no event {event_id!r}")
    found = await find_event(bus, event_id, RETRYABLE_FILTERS)
    if found is None:
        other = await find_event(bus, event_id)
        if other is None:
            return _error(404, f"no event {event_id!r} in the log")
        return _error(409, f"event {event_id} is a {other.event.type}, not a dead letter or "
                           "failure: nothing to retry")
    target = found.event
    try:
        if hist.is_dead(target):
            original = hist.dead_original(target)
        else:
            cause = await find_event(bus, target.causationid, subjects.filter_for(
                "conveyor", [target.subject]), upto=found.seq) if target.causationid else None
            if cause is None:
                raise hist.NotRetryable(f"the event that caused {target.id} is no longer in the "
                                        "log (retention), or it had no cause")
            original = cause.event
        n = 1 + await _retries_of(bus, target, original, after=found.seq)
        event = hist.retry_of(target, original, n)
    except hist.NotRetryable as exc:
        return _error(409, str(exc))
    published = await bus.publish(event)
    return web.json_response(_retried(target, event, published.seq), status=202)


async def _retries_of(bus: EventBus, target: Event, original: Event, after: int) -> int:
    subject = subjects.event_subject(original.subject, original.type)
    count = 0
    async for s in bus.read([subject], start_seq=after + 1):
        count += decode(s.event).retry_of == target.id
    return count


def _retried(target: Event, event: Event, seq: int) -> dict[str, Any]:
    return {"retried": target.id, "retried_type": target.type, "published": event.id,
            "type": event.type, "env": event.subject, "sequence": seq,
            "attempt": decode(event).retry or None}


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app.router.add_get("/api/v1/environments/{name}/history", history)
    app.router.add_get("/api/v1/metrics/dora", metrics_dora)
    app.router.add_post("/api/v1/replay", replay)
    app.router.add_post("/api/v1/events/{id}/retry", retry)
