"""A recording HTTP listener on loopback: what an attacker's server would have received."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Recorder:
    """Every request's method, path, headers and body; ``redirect_to`` makes it answer 302."""

    seen: list[str] = field(default_factory=list)
    redirect_to: str | None = None
    url: str = ""

    def heard(self, needle: str) -> bool:
        """Did any request carry ``needle`` (raw, or inside Basic auth)?"""
        return any(needle in text for text in self.seen)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        parts = [request.method, str(request.rel_url), body.decode(errors="replace")]
        for name, value in request.headers.items():
            parts.append(f"{name}: {value}")
            if value.lower().startswith("basic "):
                with contextlib.suppress(ValueError):
                    parts.append(base64.b64decode(value[6:]).decode(errors="replace"))
        self.seen.append("\n".join(parts))
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to + str(request.rel_url))
        if request.headers.get("Authorization"):
            raise web.HTTPForbidden()
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})


@contextlib.asynccontextmanager
async def recording(host: str = "127.0.0.1") -> AsyncIterator[Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.url = f"http://{host}:{runner.addresses[0][1]}"
    try:
        yield recorder
    finally:
        await runner.cleanup()
