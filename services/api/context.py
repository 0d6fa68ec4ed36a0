"""What every api route reads from the application: typed keys, the event JSON, the guard.

The routes modules and ``app.py`` import this module and never each other (aiohttp's
``web.AppKey`` is typed application state, instead of module globals), so ``app.py`` can
import the routes at the top and there is no import cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from orchestrator.adapters.nats_bus import EventBus, StoredEvent
from orchestrator.projector import Projector
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api import auth

RESOURCES: Final = web.AppKey("resources", Resources)
BUS: Final = web.AppKey("bus", EventBus)
PROJECTOR: Final = web.AppKey("projector", Projector)
SETTINGS: Final = web.AppKey("settings", Settings)

StreamTasks = set[asyncio.Task[Any]]
STREAMS: Final[web.AppKey[StreamTasks]] = web.AppKey("streams")
"""The tasks serving open Server-Sent Events streams, ended at once on shutdown."""
MAX_STREAMS: Final = web.AppKey("max_streams", int)
"""How many of them may be open at once (sse.serve answers 503 beyond)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def event_json(stored: StoredEvent) -> dict[str, Any]:
    return {**stored.event.to_dict(), "sequence": stored.seq}


def control(handler: Handler) -> Handler:
    """Only the operator role may call this handler (services.api.auth)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        refused = auth.require(request, request.app[SETTINGS], auth.Role.OPERATOR)
        if refused is not None:
            return refused
        return await handler(request)

    return wrapped
