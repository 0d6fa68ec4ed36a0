"""api: webhook receiver, query API, live event stream and dashboard (aiohttp).

Who may call what is services.api.auth: with a token configured every read needs the read or
operator token, and control endpoints (refresh, retry, sync, replay) the operator token
(``up`` refuses to listen off loopback without one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.domain import events as ev
from orchestrator.domain.events import new_event
from orchestrator.domain.masking import mask_bundle
from orchestrator.domain.trace import build_trace, end_to_end_ms
from orchestrator.projector import Projector
from orchestrator.settings import Settings
from services.api import auth, browser

log = structlog.get_logger(__name__)

BUS: web.AppKey[EventBus] = web.AppKey("bus", EventBus)
PROJECTOR: web.AppKey[Projector] = web.AppKey("projector", Projector)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MAX_EVENTS = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def control(handler: Handler) -> Handler:
    """Only the operator role may call this handler (services.api.auth)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        refused = auth.require(request, request.app[SETTINGS], auth.Role.OPERATOR)
        if refused is not None:
            return refused
        return await handler(request)

    return wrapped


async def healthz(request: web.Request) -> web.Response:
    bus = request.app[BUS]
    ok = bus.nc.is_connected
    return web.json_response({"status": "ok" if ok else "nats disconnected"},
                             status=200 if ok else 503)


async def environments(request: web.Request) -> web.Response:
    envs = request.app[PROJECTOR].envs
    return web.json_response({"environments": [s.to_dict() for _, s in sorted(envs.items())]})


async def environment(request: web.Request) -> web.Response:
    state = request.app[PROJECTOR].envs.get(request.match_info["name"])
    if state is None:
        return web.json_response({"error": "no such environment"}, status=404)
    return web.json_response(state.to_dict())


def event_json(stored: StoredEvent) -> dict[str, Any]:
    return {**stored.event.to_dict(), "sequence": stored.seq}


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


async def events(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = min(int(q.get("limit", MAX_EVENTS)), MAX_EVENTS)
        after = int(q.get("after", 0))
    except ValueError:
        return web.json_response({"error": "limit and after must be integers"}, status=400)
    env = q.get("env") or None
    if env is not None and not subjects.valid_env_name(env):
        return web.json_response({"error": f"invalid environment name {env!r}"}, status=400)
    found = await query_events(request.app[BUS], env=env, type_prefix=q.get("type") or None,
                               correlation=q.get("correlation") or None, after=after,
                               limit=limit)
    return web.json_response({"events": [event_json(s) for s in found]})


async def trace(request: web.Request) -> web.Response:
    sha = request.match_info["sha"]
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
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    env = request.query.get("env") or None
    start = int(request.query.get("after", 0)) + 1 if "after" in request.query else (
        await bus.last_seq() + 1)
    filters = subjects.filter_for("conveyor", [env] if env else None)
    # As the dashboard's stream: registered so that shutdown ends it at once (while NATS is still
    # connected), and a comment line every PING_EVERY s finds clients that went away.
    from services.api.routes_dashboard import PING_EVERY, STREAMS

    queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(256)

    async def follow() -> None:
        try:
            async for stored in bus.read(filters, start_seq=start, stop_at_end=False):
                await queue.put(stored)
        except Exception as exc:  # cancellation passes through: the stream is closing anyway
            log.warning("api.stream_failed", error=str(exc) or type(exc).__name__)
        await queue.put(None)

    producer = asyncio.create_task(follow())
    me = asyncio.current_task()
    streams = request.app[STREAMS]
    if me is not None:
        streams.add(me)
    try:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the queue yields, and shutdown would wait on this stream
                async with asyncio.timeout(PING_EVERY):
                    stored = await queue.get()
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if stored is None:
                break  # NATS went away: the client reconnects with ?after=
            payload = json.dumps(event_json(stored), separators=(",", ":"))
            await resp.write(f"id: {stored.seq}\nevent: {stored.event.type}\n"
                             f"data: {payload}\n\n".encode())
    except ConnectionError:
        pass  # the client went away
    finally:
        if me is not None:
            streams.discard(me)
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
    return resp


async def bundle(request: web.Request) -> web.Response:
    """A rendered bundle by digest (canonical JSON), for `conveyor diff --api`, with every
    Secret's values masked (orchestrator.domain.masking)."""
    digest = request.match_info["digest"]
    if not digest.startswith("sha256:") or len(digest) != 71:
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


def build_app(bus: EventBus, projector: Projector, settings: Settings) -> web.Application:
    # outermost first: the Host is checked before anything else, cross-site writes are refused
    # even on a tokenless instance, and only then does the token decide
    app = web.Application(client_max_size=1 << 20, middlewares=[
        browser.host_middleware(settings), browser.same_origin_writes,
        auth.middleware(settings)])
    browser.install(app)
    app[BUS] = bus
    app[PROJECTOR] = projector
    app[SETTINGS] = settings
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/environments", environments)
    app.router.add_get("/api/v1/environments/{name}", environment)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/events/stream", stream)
    app.router.add_get("/api/v1/trace/{sha}", trace)
    app.router.add_post("/api/v1/refresh", refresh)
    app.router.add_get("/api/v1/bundles/{digest}", bundle)
    app.router.add_post("/api/v1/environments/{name}/sync", sync)
    from services.api import routes_dashboard, routes_history, routes_webhooks

    for module in (routes_history, routes_dashboard, routes_webhooks):
        module.add_routes(app)
    return app


class ApiService:
    def __init__(self, bus: EventBus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.projector = Projector(bus)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        await self.projector.start()
        app = build_app(self.bus, self.projector, self.settings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
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
