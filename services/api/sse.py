"""The api's one Server-Sent Events loop, shared by ``/api/v1/events/stream`` and the
dashboard's stream.

A stream is fed by producers that put ready frames on a queue (``None``: a producer ended,
say NATS went away, and the client reconnects with ``Last-Event-ID``/``?after=``). The loop
writes frames, sends a comment line every ``PING_EVERY`` seconds (which keeps proxies from
closing an idle stream and finds clients that went away), and registers its task in the
application's ``STREAMS`` so shutdown ends it at once while NATS is still connected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from types import MappingProxyType
from typing import Any, Final

import structlog
from aiohttp import web

from services.api.context import MAX_STREAMS, STREAMS

log = structlog.get_logger(__name__)

PING_EVERY: Final = 15.0
DEFAULT_MAX_STREAMS: Final = 64
QUEUE_SIZE: Final = 256
PRODUCER_GRACE: Final = 2.0
HEADERS: Final = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                  "X-Accel-Buffering": "no"})

Frames = asyncio.Queue[bytes | None]
Producer = Callable[[Frames], Coroutine[Any, Any, None]]


def frame(data: str, *, event: str | None = None, id: int | None = None) -> bytes:
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {data}\n\n".encode()


def at_cap(request: web.Request) -> web.Response | None:
    """503 when the open streams (both endpoints together) are at the cap: each holds a NATS
    consumer and tasks for as long as its client stays, so their number is bounded."""
    cap = request.app[MAX_STREAMS]
    if len(request.app[STREAMS]) < cap:
        return None
    log.warning("api.streams_at_cap", cap=cap)
    return web.json_response({"error": f"too many live streams (at most {cap}); retry later"},
                             status=503, headers={"Retry-After": "10"})


async def serve(request: web.Request, producers: Sequence[Producer], *,
                retry_ms: int | None = None) -> web.StreamResponse:
    refused = at_cap(request)
    if refused is not None:
        return refused
    me = asyncio.current_task()
    streams = request.app[STREAMS]
    if me is not None:
        streams.add(me)  # with no await since the check: the cap cannot be overshot
    tasks: list[asyncio.Task[None]] = []
    resp = web.StreamResponse(headers=HEADERS)
    try:
        await resp.prepare(request)
        queue: Frames = asyncio.Queue(QUEUE_SIZE)
        tasks = [asyncio.create_task(produce(queue)) for produce in producers]
        if retry_ms is not None:
            await resp.write(f"retry: {retry_ms}\n\n".encode())
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the queue yields, and shutdown would wait on this stream
                async with asyncio.timeout(PING_EVERY):
                    item = await queue.get()
            except TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if item is None:
                break
            await resp.write(item)
    except ConnectionError:
        pass  # the client went away
    finally:
        if me is not None:
            streams.discard(me)
        for task in tasks:
            task.cancel()
        # bounded: a producer stuck in NATS clean-up must not hold the server's shutdown
        if tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait(tasks, timeout=PRODUCER_GRACE)
    return resp


async def close_streams(app: web.Application) -> None:
    """On shutdown, end open streams now instead of waiting out the shutdown timeout."""
    streams = app[STREAMS]
    for task in list(streams):
        task.cancel()
