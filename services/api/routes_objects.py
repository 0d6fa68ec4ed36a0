"""api routes: what an environment runs, object by object, and what its last change changed.

- ``GET /api/v1/environments/{name}/objects``: the objects of the bundle the environment last
  applied (kind, namespace, name), each with the health the last verdict gave it: the objects a
  verdict names as not ready carry their own status and message, the others the verdict's
  overall status. Only identities travel, never a field's value, so a Secret shows as its name.
  Each object has ``children``: the live objects it owns (a Deployment's ReplicaSets, each with
  its Pods) with their health, as the kube applier recorded them in that verdict; empty for a
  git target, which has no live state, and for a verdict recorded before children were.
- ``GET /api/v1/environments/{name}/changes``: the object-level diff between the bundle applied
  before and the one applied now (added, changed, removed, with a unified YAML diff of each;
  Secret values are redacted by ``orchestrator.domain.diff``, only "changed" or "equal" shows).

Both read the bundles from the object store by the digests the projection and the history
already hold; nothing new is recorded to serve them. The object list is the desired state (what
the environment declares and the applier applied); the live children come from the health
verdict in the log: the api holds no cluster credentials and never asks a cluster.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.bundle import decode_bundle, object_key
from orchestrator.domain.codec import decode_as
from orchestrator.domain.diff import diff_revisions, summarise
from orchestrator.domain.events import Event
from orchestrator.domain.payloads import HealthFields
from services.api.context import BUS, PROJECTOR

HEALTH_TYPES = (ev.HEALTH_HEALTHY, ev.HEALTH_PROGRESSING, ev.HEALTH_DEGRADED)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _bundle(bus: EventBus, digest: str) -> list[dict[str, Any]] | None:
    payload = await bus.get_bundle(digest) if digest else None
    return decode_bundle(payload) if payload is not None else None


async def _last_health(bus: EventBus, env: str) -> Event | None:
    found = [s for s in [await bus.last_event(env, t) for t in HEALTH_TYPES] if s is not None]
    return max(found, key=lambda s: s.seq).event if found else None


def identity(obj: dict[str, Any]) -> dict[str, str]:
    key = object_key(obj)
    return {"apiVersion": str(obj.get("apiVersion", "")), "kind": key.kind,
            "namespace": key.namespace or "", "name": key.name}


def with_health(objects: list[dict[str, Any]], verdict: Event | None) -> list[dict[str, Any]]:
    """Each object's identity and health. A verdict lists the objects that are not ready (up
    to a cap; ``unhealthy`` is the exact count): a listed object has its own status, the others
    are ready when the list is complete, and unknown when there is no verdict or it was cut."""
    listed: dict[tuple[str, str, str], dict[str, Any]] = {}
    owned: dict[tuple[str, str, str], list[Any]] = {}
    complete = False
    if verdict is not None:
        found = decode_as(verdict, HealthFields)
        for tree in found.children or ():
            if isinstance(tree, dict) and isinstance(tree.get("children"), list):
                kind, name = str(tree.get("kind", "")), str(tree.get("name", ""))
                owned[(kind, str(tree.get("namespace") or ""), name)] = tree["children"]
                owned.setdefault((kind, "", name), tree["children"])  # namespace defaulted
        for entry in found.objects or ():
            if isinstance(entry, dict):
                listed[(str(entry.get("kind", "")), str(entry.get("namespace") or ""),
                        str(entry.get("name", "")))] = entry
        complete = int(found.unhealthy or 0) <= len(listed)
    out = []
    for obj in objects:
        ident = identity(obj)
        own = listed.get((ident["kind"], ident["namespace"], ident["name"]))
        if own is not None:
            health, message = str(own.get("status") or "Unknown"), str(own.get("message", ""))
        else:
            health, message = ("Healthy" if complete else "Unknown"), ""
        out.append({**ident, "health": health, "message": message,
                    "children": owned.get((ident["kind"], ident["namespace"], ident["name"]), [])})
    return sorted(out, key=lambda o: (o["namespace"], o["kind"], o["name"]))


async def objects(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not subjects.valid_env_name(name):
        return _error(400, f"invalid environment name {name!r}")
    state = request.app[PROJECTOR].envs.get(name)
    if state is None:
        return _error(404, "no such environment")
    bus = request.app[BUS]
    found = await _bundle(bus, state.bundle_digest)
    if found is None:
        return web.json_response({"env": name, "digest": state.bundle_digest,
                                  "revision": state.last_applied_revision, "objects": []})
    return web.json_response({
        "env": name, "digest": state.bundle_digest, "revision": state.last_applied_revision,
        "objects": with_health(found, await _last_health(bus, name))})


def _applied(entries: tuple[hist.Attempt, ...]) -> list[hist.Attempt]:
    """Attempts that changed the target, oldest first, one per digest change."""
    out: list[hist.Attempt] = []
    for entry in entries:
        if entry.outcome == hist.SUCCEEDED and entry.digest \
                and (not out or out[-1].digest != entry.digest):
            out.append(entry)
    return out


async def changes(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not subjects.valid_env_name(name):
        return _error(400, f"invalid environment name {name!r}")
    projector = request.app[PROJECTOR]
    if name not in projector.envs:
        return _error(404, "no such environment")
    applied = _applied(projector.history[name].entries) if name in projector.history else []
    if not applied:
        return web.json_response({"env": name, "from": None, "to": None, "summary": "",
                                  "objects": []})
    now, before = applied[-1], (applied[-2] if len(applied) > 1 else None)
    bus = request.app[BUS]
    desired = await _bundle(bus, now.digest) or []
    previous = (await _bundle(bus, before.digest) or []) if before is not None else []
    diffs = diff_revisions(desired, previous)

    def end(a: hist.Attempt | None) -> dict[str, Any] | None:
        return None if a is None else {"revision": a.revision, "digest": a.digest,
                                       "message": a.message, "finished_at": a.finished_at}

    return web.json_response({
        "env": name, "from": end(before), "to": end(now), "summary": summarise(diffs),
        "objects": [{"kind": d.key.kind, "group": d.key.group, "namespace": d.key.namespace,
                     "name": d.key.name, "change": d.change, "diff": d.unified_text}
                    for d in diffs]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/environments/{name}/objects", objects)
    app.router.add_get("/api/v1/environments/{name}/changes", changes)
