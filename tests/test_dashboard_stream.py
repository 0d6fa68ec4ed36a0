"""The dashboard's server side without a browser: page, assets, and its event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.projector import Projector
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api.app import build_app
from services.api.routes_dashboard import STATIC_DIR


@dataclass
class Api:
    url: str
    bus: EventBus
    projector: Projector
    runner: web.AppRunner


@pytest.fixture
async def api(bus: EventBus, nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Api]:
    projector = Projector(bus)
    await projector.start()
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        listen="127.0.0.1:0")
    runner = web.AppRunner(build_app(Resources.around(bus, settings), projector),
                           shutdown_timeout=30.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield Api(f"http://{host}:{port}", bus, projector, runner)
    await runner.cleanup()
    await projector.stop()


def detected(env: str, sha: str) -> Event:
    return new_event(ev.COMMIT_DETECTED, env=env, correlation=sha, key=sha,
                     data={"revision": sha, "message": f"commit {sha}"})


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    id: str | None


class Reader:
    """Reads SSE messages (comments and the retry hint skipped) until a condition holds."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.frames: list[Frame] = []

    def logs(self) -> list[dict[str, Any]]:
        return [f.data for f in self.frames if f.event == "log"]

    def envs(self) -> list[dict[str, Any]]:
        return [f.data for f in self.frames if f.event == "env"]

    async def until(self, done: Callable[[Reader], bool], timeout: float = 15.0) -> None:
        async def read() -> None:
            fields: dict[str, str] = {}
            while not done(self):
                line = (await self.resp.content.readline()).decode().rstrip("\n")
                if line == "":
                    if "data" in fields:
                        self.frames.append(Frame(fields.get("event", "message"),
                                                 json.loads(fields["data"]), fields.get("id")))
                    fields = {}
                elif not line.startswith(":"):
                    name, _, val = line.partition(": ")
                    fields[name] = val

        await asyncio.wait_for(read(), timeout)


def test_the_script_never_builds_markup_from_strings() -> None:
    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    page = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page  # all of it allowed by the CSP


async def test_page_and_assets_are_served_with_a_strict_policy(api: Api) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.url}/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            page = await resp.text()
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            async with http.get(f"{api.url}{asset}") as resp:
                assert resp.status == 200, asset
                assert resp.content_type in ("text/css", "text/javascript",
                                             "application/javascript")
        async with http.get(f"{api.url}/static/../app.py") as resp:
            assert resp.status in (403, 404)


async def test_stream_replays_the_last_events_then_follows(api: Api) -> None:
    for sha in ("a1", "a2", "a3"):
        await api.bus.publish(detected("dev", sha))
    async with aiohttp.ClientSession() as http, \
            http.get(f"{api.url}/api/v1/dashboard/stream", params={"last": "2"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        sse = Reader(resp)
        # the last two events, and the projected state of every environment
        await sse.until(lambda r: len(r.logs()) == 2
                        and any(e["desired_revision"] == "a3" for e in r.envs()))
        assert [e["correlationid"] for e in sse.logs()] == ["a2", "a3"]
        assert [f.id for f in sse.frames if f.event == "log"] == [
            str(e["sequence"]) for e in sse.logs()]
        assert {e["name"] for e in sse.envs()} == {"dev"}
        # a new event arrives, then the environment's state once the projector folded it
        await api.bus.publish(detected("dev", "a4"))
        await sse.until(lambda r: len(r.logs()) == 3 and r.envs()[-1]["desired_revision"] == "a4")
        assert sse.logs()[-1]["correlationid"] == "a4"


async def test_stream_resumes_after_last_event_id(api: Api) -> None:
    published = [await api.bus.publish(detected("prod", sha)) for sha in ("b1", "b2", "b3")]
    async with aiohttp.ClientSession() as http:
        headers = {"Last-Event-ID": str(published[0].seq)}
        async with http.get(f"{api.url}/api/v1/dashboard/stream", headers=headers) as resp:
            sse = Reader(resp)
            await sse.until(lambda r: any(e["correlationid"] == "b3" for e in r.logs()))
        assert [e["correlationid"] for e in sse.logs()] == ["b2", "b3"]
        async with http.get(f"{api.url}/api/v1/dashboard/stream",
                            params={"after": str(published[1].seq)}) as resp:
            sse = Reader(resp)
            await sse.until(lambda r: len(r.logs()) == 1)
        assert [e["correlationid"] for e in sse.logs()] == ["b3"]
        for bad in ({"after": "x"}, {"last": "-1"}):
            async with http.get(f"{api.url}/api/v1/dashboard/stream", params=bad) as resp:
                assert resp.status == 400


async def test_shutdown_ends_open_streams_at_once(api: Api) -> None:
    await api.bus.publish(detected("dev", "c1"))
    async with aiohttp.ClientSession() as http, \
            http.get(f"{api.url}/api/v1/dashboard/stream") as resp:
        await Reader(resp).until(lambda r: len(r.logs()) == 1)
        # the runner waits up to 30 s for handlers; an open stream must not hold it
        await asyncio.wait_for(api.runner.cleanup(), 10)

        async def until_closed() -> None:
            with contextlib.suppress(aiohttp.ClientPayloadError,
                                     aiohttp.ServerDisconnectedError, ConnectionError):
                while await resp.content.readline():
                    pass

        await asyncio.wait_for(until_closed(), 10)


async def test_stream_sends_only_the_environments_changed_after_the_page_loaded(
        api: Api) -> None:
    for env in ("dev", "prod", "qa"):
        await api.bus.publish(detected(env, f"{env}1"))
    end = await api.bus.last_seq()
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(30), api.projector.changed:
            await api.projector.changed.wait_for(lambda: api.projector.position >= end)
        async with http.get(f"{api.url}/api/v1/environments") as resp:
            listed = await resp.json()
        assert listed["position"] == end and len(listed["environments"]) == 3
        params = {"last": "0", "envs_after": str(listed["position"])}
        async with http.get(f"{api.url}/api/v1/dashboard/stream", params=params) as resp:
            sse = Reader(resp)
            # a change after the listing: that environment alone, not the three again
            await api.bus.publish(detected("prod", "prod2"))
            await sse.until(lambda r: bool(r.envs()))
            await api.bus.publish(detected("qa", "qa2"))
            await sse.until(lambda r: len(r.envs()) >= 2)
        assert [(e["name"], e["desired_revision"]) for e in sse.envs()] == [
            ("prod", "prod2"), ("qa", "qa2")]
        async with http.get(f"{api.url}/api/v1/dashboard/stream",
                            params={"envs_after": "x"}) as resp:
            assert resp.status == 400


async def test_changed_since_reads_the_changed_states_newest_first(api: Api) -> None:
    for env, sha in (("a", "a1"), ("b", "b1"), ("c", "c1"), ("a", "a2")):
        await api.bus.publish(detected(env, sha))
    end = await api.bus.last_seq()
    async with asyncio.timeout(30), api.projector.changed:
        await api.projector.changed.wait_for(lambda: api.projector.position >= end)
    restarted = Projector(api.bus, durable="projector-restarted")
    await restarted.load()  # the same order from the stored states, after a restart
    for projector in (api.projector, restarted):
        assert [s.name for s in projector.changed_since(0)] == ["a", "c", "b"]
        assert [s.name for s in projector.changed_since(end - 2)] == ["a", "c"]
        assert projector.changed_since(end) == []
