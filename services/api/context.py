"""What every api route reads from the application: typed keys, the event JSON, the guard.

The routes modules and ``app.py`` import this module and never each other (aiohttp's
``web.AppKey`` is typed application state, instead of module globals), so ``app.py`` can
import the routes at the top and there is no import cycle.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.projector import Projector
from orchestrator.resources import Resources
from orchestrator.settings import Settings

RESOURCES: Final = web.AppKey("resources", Resources)
BUS: Final = web.AppKey("bus", EventBus)
PROJECTOR: Final = web.AppKey("projector", Projector)
SETTINGS: Final = web.AppKey("settings", Settings)

StreamTasks = set[asyncio.Task[Any]]
STREAMS: Final[web.AppKey[StreamTasks]] = web.AppKey("streams")
"""The tasks serving open Server-Sent Events streams, ended at once on shutdown."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def event_json(stored: StoredEvent) -> dict[str, Any]:
    return {**stored.event.to_dict(), "sequence": stored.seq}


def _authorised(request: web.Request) -> bool:
    token = request.app[SETTINGS].api_token
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


def control(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not _authorised(request):
            return web.json_response({"error": "a valid bearer token is required"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return wrapped
