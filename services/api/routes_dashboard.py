"""api routes: the live dashboard, its event stream, and ``/metrics`` (registered by build_app).

- ``GET /`` serves ``static/index.html``; ``/static/`` its stylesheet and script. The page is
  plain HTML, CSS and a little JavaScript with no build step, and reads only the public JSON API.
  A strict Content-Security-Policy (scripts and styles from this origin only) backs up the page's
  own rule of never putting event data into markup.
- ``GET /api/v1/dashboard/stream`` is Server-Sent Events for the page: on connect it replays the
  last ``last`` events (default 50), or resumes after ``Last-Event-ID`` / ``?after=SEQ``, then
  follows the log (``event: log``, ``id:`` the stream sequence). It also sends an environment's
  projected state whenever the projector folds an event into it (``event: env``), so cards show
  exactly what ``/api/v1/environments`` would, without the page re-implementing the fold.
  A comment line every 15 s keeps proxies from closing an idle stream and finds dead clients.
- ``GET /metrics`` is the Prometheus text format of the process-wide registry; it refreshes the
  per-consumer queue depth from JetStream first (at most a couple of seconds, else the last
  values).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator import metrics
from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.domain.state import EnvState
from orchestrator.projector import Projector
from services.api.app import BUS, PROJECTOR, event_json, stream_slot_refused
from services.api.browser import DASHBOARD_CSP

log = structlog.get_logger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
DEFAULT_REPLAY: Final = 50
MAX_REPLAY: Final = 1000
PING_EVERY: Final = 15.0
PENDING_TIMEOUT: Final = 2.0
QUEUE_SIZE: Final = 256

StreamTasks = set[asyncio.Task[Any]]
STREAMS: Final[web.AppKey[StreamTasks]] = web.AppKey("dashboard_streams")

Item = tuple[str, StoredEvent | EnvState | None]


async def index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={
        "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


async def prometheus(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(metrics.refresh_consumer_pending(request.app[BUS]),
                               PENDING_TIMEOUT)
    except Exception as exc:  # the scrape still answers, with the last known depths
        log.warning("metrics.pending_refresh_failed", error=str(exc) or type(exc).__name__)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


async def _start_seq(request: web.Request, bus: EventBus) -> int:
    """Where the stream starts: after Last-Event-ID or ?after, else the last N events."""
    after = _int(request.headers.get("Last-Event-ID")) if "Last-Event-ID" in request.headers \
        else _int(request.query.get("after"))
    if after is not None:
        return after + 1
    last = _int(request.query.get("last"))
    replay = min(DEFAULT_REPLAY if last is None else last, MAX_REPLAY)
    return max(1, await bus.last_seq() - replay + 1)


async def _follow_log(bus: EventBus, start: int, queue: asyncio.Queue[Item]) -> None:
    try:
        async for stored in bus.read(start_seq=start, stop_at_end=False):
            await queue.put(("log", stored))
    except Exception as exc:  # cancellation passes through: the stream is closing anyway
        log.warning("dashboard.stream_failed", error=str(exc) or type(exc).__name__)
    await queue.put(("end", None))


async def _follow_envs(projector: Projector, queue: asyncio.Queue[Item]) -> None:
    """Every environment once, then each one again whenever the projector folds into it."""
    sent: dict[str, int] = {}

    def changed() -> list[EnvState]:
        return [s for n, s in sorted(projector.envs.items()) if sent.get(n) != s.last_seq]

    while True:
        async with projector.changed:
            # checked under the lock the projector notifies with: no change slips in between
            await projector.changed.wait_for(lambda: bool(changed()))
            states = changed()
        for state in states:
            sent[state.name] = state.last_seq
            await queue.put(("env", state))


def _frame(item: StoredEvent | EnvState | None) -> bytes:
    if isinstance(item, StoredEvent):
        payload = json.dumps(event_json(item), separators=(",", ":"))
        return f"id: {item.seq}\nevent: log\ndata: {payload}\n\n".encode()
    if isinstance(item, EnvState):
        payload = json.dumps(item.to_dict(), separators=(",", ":"))
        return f"event: env\ndata: {payload}\n\n".encode()
    return b""


async def dashboard_stream(request: web.Request) -> web.StreamResponse:
    bus = request.app[BUS]
    try:
        start = await _start_seq(request, bus)
    except ValueError:
        return web.json_response({"error": "after, last and Last-Event-ID must be "
                                           "non-negative integers"}, status=400)
    refused = stream_slot_refused(request)
    if refused is not None:
        return refused
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)
    producers = [asyncio.create_task(_follow_log(bus, start, queue)),
                 asyncio.create_task(_follow_envs(request.app[PROJECTOR], queue))]
    me = asyncio.current_task()
    streams = request.app[STREAMS]
    if me is not None:
        streams.add(me)
    try:
        await resp.write(b"retry: 2000\n\n")
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the queue yields, and shutdown would wait on this stream
                async with asyncio.timeout(PING_EVERY):
                    kind, item = await queue.get()
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if kind == "end":
                break  # a producer stopped (NATS went away): the browser reconnects and resumes
            await resp.write(_frame(item))
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        if me is not None:
            streams.discard(me)
        for task in producers:
            task.cancel()
        # bounded: a producer stuck in NATS clean-up must not hold the server's shutdown
        with contextlib.suppress(BaseException):
            await asyncio.wait(producers, timeout=2.0)
    return resp


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end open streams now instead of waiting out the shutdown timeout."""
    streams = app[STREAMS]
    for task in list(streams):
        task.cancel()


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/api/v1/dashboard/stream", dashboard_stream)
