"""api: webhook receiver, query API, live event stream and dashboard (aiohttp).

Read endpoints are open; control endpoints (refresh, retry, sync) need
``Authorization: Bearer $CONVEYOR_API_TOKEN`` whenever a token is configured (and ``up`` refuses
to listen off loopback without one). Tokens are compared in constant time.
"""

from __future__ import annotations

import asyncio
import json
import re

import orjson
import structlog
from aiohttp import web

from orchestrator import ops, subjects
from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.domain import events as ev
from orchestrator.domain.events import new_event
from orchestrator.domain.listing import EnvFilter, ListingError, page, parse_limit
from orchestrator.domain.masking import mask_bundle
from orchestrator.domain.trace import build_trace, end_to_end_ms
from orchestrator.projector import Projector
from orchestrator.resources import Resources
from services.api import (
    auth,
    browser,
    routes_dashboard,
    routes_history,
    routes_objects,
    routes_previews,
    routes_releases,
    routes_webhooks,
    sse,
)
from services.api.context import (
    BUS,
    MAX_STREAMS,
    PROJECTOR,
    RESOURCES,
    SETTINGS,
    STREAMS,
    Handler,
    control,
    event_json,
)

log = structlog.get_logger(__name__)

MAX_EVENTS = 10_000
DEFAULT_EVENTS = 100
HEADER_TIMEOUT = 15.0  # seconds for a connection to deliver a request's head


def _dumps(value: object) -> str:
    """JSON for the large answers (a page of a thousand environments): orjson, five times the
    standard library's speed."""
    return orjson.dumps(value).decode()


class BadQuery(ValueError):
    """A query parameter the api cannot use: answered 400 with this message, never 500."""


_TYPE_PREFIX = re.compile(r"^conveyor(\.[a-z_]{1,32}){0,2}\.?$")
_SHA_PREFIX = re.compile(r"^[0-9a-fA-F]{1,40}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadQuery(f"{name} must be a non-negative integer")
    return int(raw)


def query_env(request: web.Request) -> str | None:
    env = request.query.get("env") or None
    if env is not None and not subjects.valid_env_name(env):
        raise BadQuery(f"invalid environment name {env[:64]!r}")
    return env


def query_type(request: web.Request) -> str | None:
    prefix = request.query.get("type") or None
    if prefix is not None and not _TYPE_PREFIX.match(prefix):
        raise BadQuery("type must be an event type or prefix such as conveyor.apply")
    return prefix


def query_sha(value: str | None, name: str = "correlation") -> str | None:
    if value and not _SHA_PREFIX.match(value):
        raise BadQuery(f"{name} must be a commit SHA or a prefix of one (hex)")
    return value or None


@web.middleware
async def bad_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)

__all__ = ["ApiService", "build_app", "control", "event_json"]


async def environments(request: web.Request) -> web.Response:
    """A page of environments (``limit``, ``continue``) the filters select, with counts."""
    q = request.query
    projector = request.app[PROJECTOR]
    try:
        flt = EnvFilter.from_query(q)
        found = page(projector.envs.values(), flt, parse_limit(q.get("limit")),
                     q.get("continue") or None)
    except ListingError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    # ``position``: the projection's sequence these states are at (a follower of the
    # dashboard stream asks for the changes after it)
    return web.json_response({**found.to_dict(), "position": projector.position},
                             dumps=_dumps)


async def environment(request: web.Request) -> web.Response:
    state = request.app[PROJECTOR].envs.get(request.match_info["name"])
    if state is None:
        return web.json_response({"error": "no such environment"}, status=404)
    return web.json_response(state.to_dict())


async def query_events(bus: EventBus, *, env: str | None, type_prefix: str | None,
                       correlation: str | None, after: int = 0,
                       limit: int = MAX_EVENTS) -> list[StoredEvent]:
    """Events oldest first; env and type filter on the server, correlation while reading."""
    prefix = type_prefix or "conveyor"
    envs = [env] if env else None
    filters = subjects.filter_for(prefix, envs)
    out: list[StoredEvent] = []
    async for stored in bus.read(filters, start_seq=after + 1):
        e = stored.event
        if correlation and not e.correlationid.startswith(correlation):
            continue
        if type_prefix and not (e.type == type_prefix or e.type.startswith(
                type_prefix.rstrip(".") + ".")):
            continue
        out.append(stored)
        if len(out) >= limit:
            break
    return out


async def newest_events(bus: EventBus, *, env: str | None, type_prefix: str | None,
                        correlation: str | None, before: int, limit: int) -> list[StoredEvent]:
    """The newest ``limit`` matching events below sequence ``before``, oldest first.

    JetStream reads forwards only, so read windows that end at ``before`` and double in size
    until they hold ``limit`` matches or reach the start of the log: an unfiltered page costs
    one window; a sparse filter costs O(log n) windows, never a read of the whole log twice.
    """
    window = max(limit, 64)
    while True:
        start = max(0, before - 1 - window)
        found = [s for s in await query_events(bus, env=env, type_prefix=type_prefix,
                                               correlation=correlation, after=start,
                                               limit=MAX_EVENTS)
                 if s.seq < before]
        if len(found) >= limit or start == 0:
            return found[-limit:]
        window *= 4


async def events(request: web.Request) -> web.Response:
    """Events: by default the newest page (``limit``, 100 by default) and a ``before`` cursor
    for the page older than it; with ``after`` the events after that sequence, oldest first
    (what a follower reads)."""
    q = request.query
    limit = min(query_int(request, "limit", DEFAULT_EVENTS), MAX_EVENTS)
    after = query_int(request, "after", 0) if q.get("after") else None
    before = query_int(request, "before", 0) if q.get("before") else None
    if limit < 1 or (before is not None and before < 1):
        raise BadQuery("limit, after and before must be whole numbers (limit, before >= 1)")
    env = query_env(request)
    bus = request.app[BUS]
    what = {"env": env, "type_prefix": query_type(request),
            "correlation": query_sha(q.get("correlation"))}
    if after is not None:
        found = await query_events(bus, **what, after=after, limit=limit)
        more = {"after": found[-1].seq} if len(found) == limit else None
    else:
        end = before if before is not None else await bus.last_seq() + 1
        found = await newest_events(bus, **what, before=end, limit=limit)
        more = {"before": found[0].seq} if found and found[0].seq > 1 else None
    return web.json_response({"events": [event_json(s) for s in found], "next": more})


async def trace(request: web.Request) -> web.Response:
    sha = query_sha(request.match_info["sha"], "the commit") or ""
    found = await query_events(request.app[BUS], env=None, type_prefix=None, correlation=sha)
    evs = [s.event for s in found]
    return web.json_response({
        "correlation": sha,
        "tree": [n.to_dict() for n in build_trace(evs)],
        "end_to_end_ms": end_to_end_ms([e for e in evs if e.subject != ev.NO_ENV]),
        "events": [event_json(s) for s in found],
    })


@control
async def refresh(request: web.Request) -> web.Response:
    bus = request.app[BUS]
    seq = await bus.last_seq()
    event = new_event(ev.REFRESH_REQUESTED, env=ev.NO_ENV, source="conveyor/api",
                      key=f"refresh:{seq}:{asyncio.get_running_loop().time()}",
                      data={"by": request.remote or ""})
    await bus.publish(event)
    return web.json_response({"requested": event.id}, status=202)


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every new event as it is appended to the log."""
    bus = request.app[BUS]
    env = query_env(request)  # checked before the stream answers 200: a bad one is a 400
    start = query_int(request, "after", 0) + 1 if "after" in request.query else (
        await bus.last_seq() + 1)
    filters = subjects.filter_for("conveyor", [env] if env else None)

    async def follow(queue: sse.Frames) -> None:
        try:
            async for stored in bus.read(filters, start_seq=start, stop_at_end=False):
                payload = json.dumps(event_json(stored), separators=(",", ":"))
                await queue.put(sse.frame(payload, event=stored.event.type, id=stored.seq))
        except Exception as exc:  # cancellation passes through: the stream is closing anyway
            log.warning("api.stream_failed", error=str(exc) or type(exc).__name__)
        await queue.put(None)

    return await sse.serve(request, [follow])


async def bundle(request: web.Request) -> web.Response:
    """A rendered bundle by digest (canonical JSON), for `conveyor diff --api`, with every
    Secret's values masked (orchestrator.domain.masking)."""
    digest = request.match_info["digest"]
    if not _DIGEST.match(digest):
        return web.json_response({"error": "expected a digest sha256:<64 hex>"}, status=400)
    payload = await request.app[BUS].get_bundle(digest)
    if payload is None:
        return web.json_response({"error": "no such bundle"}, status=404)
    try:
        masked = mask_bundle(payload)  # Secret values never leave through the api
    except ValueError:
        return web.json_response({"error": "the stored object is not a bundle"}, status=422)
    return web.Response(body=masked, content_type="application/json")


@control
async def sync(request: web.Request) -> web.Response:
    """Apply an environment's latest render again (after drift, or a failed apply).

    Not a way around Git: it re-applies what the newest commit already rendered, as a new event
    caused by that render, so the applier's usual checks (digest, order) still hold.
    """
    env = request.match_info["name"]
    if not subjects.valid_env_name(env):
        return web.json_response({"error": f"invalid environment name {env!r}"}, status=400)
    bus = request.app[BUS]
    last = await bus.last_event(env, ev.RENDER_SUCCEEDED)
    if last is None:
        return web.json_response({"error": f"environment {env} has no render yet"}, status=404)
    seq = await bus.last_seq()
    event = new_event(ev.RENDER_SUCCEEDED, env=env, cause=last.event, source="conveyor/api",
                      key=f"sync:{seq}",
                      data={**last.event.data, "cause": "sync", "origin_seq": seq,
                            "requested_by": request.remote or ""})
    await bus.publish(event)
    return web.json_response({"requested": event.id, "revision": event.correlationid},
                             status=202)


def build_app(resources: Resources, projector: Projector, *,
              max_streams: int = sse.DEFAULT_MAX_STREAMS) -> web.Application:
    settings = resources.settings
    # outermost first: the Host is checked before anything else, cross-site writes are refused
    # even on a tokenless instance, and only then does the token decide
    app = web.Application(client_max_size=1 << 20, middlewares=[
        browser.host_middleware(settings), browser.same_origin_writes,
        auth.middleware(settings), bad_query])
    browser.install(app)
    app[MAX_STREAMS] = max_streams
    app[RESOURCES] = resources
    app[BUS] = resources.bus
    app[PROJECTOR] = projector
    app[SETTINGS] = resources.settings
    app[STREAMS] = set()
    app.on_shutdown.append(sse.close_streams)
    ops.add_routes(app, resources, queue_depth=True)  # /healthz, /metrics
    app.router.add_get("/api/v1/environments", environments)
    app.router.add_get("/api/v1/environments/{name}", environment)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/events/stream", stream)
    app.router.add_get("/api/v1/trace/{sha}", trace)
    app.router.add_post("/api/v1/refresh", refresh)
    app.router.add_get("/api/v1/bundles/{digest}", bundle)
    app.router.add_post("/api/v1/environments/{name}/sync", sync)
    for module in (routes_history, routes_objects, routes_dashboard, routes_webhooks,
                   routes_releases, routes_previews):
        module.add_routes(app)
    return app


class ApiService:
    def __init__(self, resources: Resources, *, max_streams: int = sse.DEFAULT_MAX_STREAMS,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        self.max_streams = max_streams
        self.header_timeout = header_timeout
        self.resources = resources
        self.bus = resources.bus
        self.settings = resources.settings
        self.projector = Projector(self.bus)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        await self.projector.start()
        app = build_app(self.resources, self.projector, max_streams=self.max_streams)
        # aiohttp arms keepalive_timeout when a connection opens and again after each answer,
        # and closes the connection if no complete request head arrived by then: with a short
        # one, that is the header read timeout (a slow-loris client holds nothing for long)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0,
                                     keepalive_timeout=self.header_timeout)
        await self._runner.setup()
        host, _, port = self.settings.listen.rpartition(":")
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        real_port = sockets[0].getsockname()[1] if sockets else int(port)
        self.url = f"http://{host or '127.0.0.1'}:{real_port}"
        log.info("api.listening", url=self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.projector.stop()
