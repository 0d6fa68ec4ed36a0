"""api routes: the live dashboard and its event stream (registered by build_app).

- ``GET /`` serves ``static/index.html``; ``/static/`` its stylesheet and script. The page is
  plain HTML, CSS and a little JavaScript with no build step, and reads only the public JSON API.
  A strict Content-Security-Policy (scripts and styles from this origin only) backs up the page's
  own rule of never putting event data into markup.
- ``GET /api/v1/dashboard/stream`` is Server-Sent Events for the page: on connect it replays the
  last ``last`` events (default 50), or resumes after ``Last-Event-ID`` / ``?after=SEQ``, then
  follows the log (``event: log``, ``id:`` the stream sequence). It also sends an environment's
  projected state whenever the projector folds an event into it (``event: env``), so cards show
  exactly what ``/api/v1/environments`` would, without the page re-implementing the fold:
  first every environment changed after ``envs_after`` (the ``position`` of the page's
  ``/api/v1/environments`` answer; 0, the default, sends all), then the changes, batched
  (at most every ``ENV_BATCH`` seconds).
  A comment line every 15 s keeps proxies from closing an idle stream and finds dead clients.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.domain.state import EnvState
from orchestrator.projector import Projector
from services.api import sse
from services.api.browser import DASHBOARD_CSP
from services.api.context import BUS, PROJECTOR, event_json

log = structlog.get_logger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
DEFAULT_REPLAY: Final = 50
MAX_REPLAY: Final = 1000
ENV_BATCH: Final = 0.25  # seconds: environment states are sent at most this often


async def index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={
        "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


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


async def _follow_log(bus: EventBus, start: int, queue: sse.Frames) -> None:
    try:
        async for stored in bus.read(start_seq=start, stop_at_end=False):
            await queue.put(_frame(stored))
    except Exception as exc:  # cancellation passes through: the stream is closing anyway
        log.warning("dashboard.stream_failed", error=str(exc) or type(exc).__name__)
    await queue.put(None)  # the browser reconnects and resumes


async def _follow_envs(projector: Projector, after: int, queue: sse.Frames,
                       batch: float = ENV_BATCH) -> None:
    """Every environment changed after sequence ``after`` (0: all of them), then each one again
    when the projector folds into it: at most once per ``batch`` seconds, so a rollout of a
    thousand environments costs an open page a few wake-ups a second, not one per event."""
    seen = [after]  # the newest sequence sent

    def changed() -> bool:
        return bool(projector.changed_since(seen[0]))

    while True:
        async with projector.changed:
            # checked under the lock the projector notifies with: no change slips in between
            await projector.changed.wait_for(changed)
            states = projector.changed_since(seen[0])
        seen[0] = states[0].last_seq
        for state in reversed(states):
            await queue.put(_frame(state))
        await asyncio.sleep(batch)  # the changes of the next ``batch`` seconds go together


def _frame(item: StoredEvent | EnvState) -> bytes:
    if isinstance(item, StoredEvent):
        return sse.frame(json.dumps(event_json(item), separators=(",", ":")), event="log",
                         id=item.seq)
    return sse.frame(json.dumps(item.to_dict(), separators=(",", ":")), event="env")


async def dashboard_stream(request: web.Request) -> web.StreamResponse:
    bus = request.app[BUS]
    try:
        start = await _start_seq(request, bus)
        envs_after = _int(request.query.get("envs_after")) or 0
    except ValueError:
        return web.json_response({"error": "after, last, envs_after and Last-Event-ID must "
                                           "be non-negative integers"}, status=400)
    projector = request.app[PROJECTOR]

    async def log_events(queue: sse.Frames) -> None:
        await _follow_log(bus, start, queue)

    async def env_states(queue: sse.Frames) -> None:
        await _follow_envs(projector, envs_after, queue)

    return await sse.serve(request, [log_events, env_states], retry_ms=2000)


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.router.add_get("/api/v1/dashboard/stream", dashboard_stream)
