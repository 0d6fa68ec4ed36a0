"""api: webhook receiver, query API, live event stream and dashboard (aiohttp).

Who may call what is services.api.auth: with a token configured every read needs the read or
operator token, and control endpoints (refresh, retry, sync, replay) the operator token
(``up`` refuses to listen off loopback without one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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
MAX_STREAMS = 64  # live streams (SSE) open at once, both endpoints together
HEADER_TIMEOUT = 15.0  # seconds for a connection to deliver a request's headers
MAX_STREAMS_KEY: web.AppKey[int] = web.AppKey("max_streams", int)

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


async def events(request: web.Request) -> web.Response:
    limit = min(query_int(request, "limit", MAX_EVENTS), MAX_EVENTS)
    after = query_int(request, "after", 0)
    found = await query_events(request.app[BUS], env=query_env(request),
                               type_prefix=query_type(request),
                               correlation=query_sha(request.query.get("correlation")),
                               after=after, limit=limit)
    return web.json_response({"events": [event_json(s) for s in found]})


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
    env = query_env(request)  # checked before the 200 goes out: a bad one is a 400
    start = query_int(request, "after", 0) + 1 if "after" in request.query else (
        await bus.last_seq() + 1)
    filters = subjects.filter_for("conveyor", [env] if env else None)
    refused = stream_slot_refused(request)
    if refused is not None:
        return refused
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
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


def stream_slot_refused(request: web.Request) -> web.Response | None:
    """503 when the live streams (both kinds together) are at their cap: each holds a NATS
    consumer and a task for as long as the client stays, so their number is bounded."""
    from services.api.routes_dashboard import STREAMS

    cap = request.app[MAX_STREAMS_KEY]
    if len(request.app[STREAMS]) < cap:
        return None
    log.warning("api.streams_at_cap", cap=cap)
    return web.json_response({"error": f"too many live streams (at most {cap}); retry later"},
                             status=503, headers={"Retry-After": "10"})


def build_app(bus: EventBus, projector: Projector, settings: Settings, *,
              max_streams: int = MAX_STREAMS) -> web.Application:
    # outermost first: the Host is checked before anything else, cross-site writes are refused
    # even on a tokenless instance, and only then does the token decide
    app = web.Application(client_max_size=1 << 20, middlewares=[
        browser.host_middleware(settings), browser.same_origin_writes,
        auth.middleware(settings), bad_query])
    app[MAX_STREAMS_KEY] = max_streams
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
    def __init__(self, bus: EventBus, settings: Settings, *, max_streams: int = MAX_STREAMS,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        self.bus = bus
        self.settings = settings
        self.max_streams = max_streams
        self.header_timeout = header_timeout
        self.projector = Projector(bus)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        await self.projector.start()
        app = build_app(self.bus, self.projector, self.settings, max_streams=self.max_streams)
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
