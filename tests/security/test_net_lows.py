"""The low findings on the api: unvalidated query parameters gave 500s; no header or body read
timeout; no cap on live streams; huge values logged in one line; webhook replays recognised by
an unsigned header. Each now has a bounded answer, and the next good commit still deploys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from conveyor.demo import demo_files
from orchestrator import logging as clog
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api import routes_webhooks
from services.api.app import ApiService
from tests.security.net_support import api_url, applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_webhook_api import api, delivery, post, refreshes  # noqa: F401 (api: fixture)

BAD_QUERIES = [
    "/api/v1/events?after=x", "/api/v1/events?limit=-1", "/api/v1/events?after=1e9",
    "/api/v1/events?type=conveyor.>", "/api/v1/events?type=foo%20bar", "/api/v1/events?env=a.b",
    "/api/v1/events?correlation=zz%00", f"/api/v1/events?after={'9' * 5000}",
    "/api/v1/events?after=%D9%A3",  # an Arabic-Indic digit: int() would take it
    "/api/v1/events/stream?after=abc", "/api/v1/events/stream?env=a.b",
    "/api/v1/events/stream?after=-5",
    "/api/v1/dashboard/stream?after=-1", "/api/v1/dashboard/stream?last=x",
    "/api/v1/trace/not-hex!", f"/api/v1/trace/{'a' * 41}",
    f"/api/v1/bundles/sha256:{'Z' * 64}", f"/api/v1/bundles/sha256:{'0' * 63}%20",
    "/api/v1/environments/dev/history?limit=-3", "/api/v1/environments/dev/history?limit=x",
    "/api/v1/metrics/dora?window=abc", "/api/v1/metrics/dora?env=a.b",
]


@contextlib.asynccontextmanager
async def second_api(bus: EventBus, settings: Settings, **limits: float) -> AsyncIterator[str]:
    """Another api on the same bus, with limits small enough to reach in a test."""
    service = ApiService(Resources.around(bus, settings), **limits)  # type: ignore[arg-type]
    await service.start()
    try:
        yield service.url
    finally:
        await service.stop()


async def test_bad_query_parameters_are_400_never_500(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        async with aiohttp.ClientSession() as http:
            for path in BAD_QUERIES:
                async with http.get(url + path) as resp:
                    assert resp.status == 400, (path, resp.status, await resp.text())
                    assert "error" in await resp.json()
            # the good forms still answer
            for path in ("/api/v1/events?type=conveyor.apply&limit=5&after=0",
                         f"/api/v1/events?correlation={first[:8]}&env=dev",
                         f"/api/v1/trace/{first[:10]}"):
                async with http.get(url + path) as resp:
                    assert resp.status == 200, path
        await deploys_next_commit(conveyor, repo, bus)


async def test_slow_headers_and_bodies_are_cut_off_and_streams_are_capped(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data")
    monkeypatch.setattr(routes_webhooks, "BODY_TIMEOUT", 0.5)
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", "s")
    async with running(settings) as conveyor, \
            second_api(bus, settings, max_streams=2, header_timeout=1.0) as url:
        await wait_for_events(bus, applied(first))
        host, port = url.removeprefix("http://").split(":")
        # slow loris: a request head that never ends is closed after the header timeout
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/v1/environments HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        async with asyncio.timeout(10):  # the server's default would be an hour
            assert await reader.read() == b""
        writer.close()
        # a body announced but not sent: 408 once the body timeout passes
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/v1/webhooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"a\":")
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        assert b" 408 " in status_line
        writer.close()
        # live streams: at most two at once, the third is told to come back later
        async with aiohttp.ClientSession() as http, \
                http.get(f"{url}/api/v1/dashboard/stream?last=1") as one, \
                http.get(f"{url}/api/v1/events/stream") as two:
            assert (one.status, two.status) == (200, 200)
            await one.content.readline()  # both are being served
            async with http.get(f"{url}/api/v1/dashboard/stream") as third:
                assert third.status == 503 and third.headers["Retry-After"]
            async with http.get(f"{url}/api/v1/environments") as other:
                assert other.status == 200  # the cap is on streams only
        await deploys_next_commit(conveyor, repo, bus)


async def test_a_replayed_webhook_with_a_fresh_delivery_id_is_still_a_duplicate(
        api: str, bus: EventBus) -> None:  # noqa: F811 (the fixture)
    headers, body = delivery("github-push", "github")
    assert (await post(api, "github", headers, body))[0] == 202
    count = len(await refreshes(bus))
    # the attack: the same signed body, a new unsigned X-GitHub-Delivery
    replayed = {**headers, "X-GitHub-Delivery": "00000000-attacker-chosen-id"}
    status, answer = await post(api, "github", replayed, body)
    assert (status, answer["ignored"]) == (200, "duplicate delivery")
    assert len(await refreshes(bus)) == count
    # an oversized delivery header is bounded where it is kept
    headers, body = delivery("gitlab-push", "gitlab")
    long_id = "x" * 6000
    status, answer = await post(api, "gitlab", {**headers, "X-Gitlab-Event-UUID": long_id}, body)
    assert status == 202
    assert all(len(e.data["delivery"]) <= 128 for e in await refreshes(bus))


def test_huge_values_are_logged_bounded() -> None:
    body = "{" + "a" * 2_000_000
    event = clog.redact_event(None, "warning", {"event": "x", "body": body,
                                                "raw": body.encode()})
    assert len(event["body"]) < clog.MAX_FIELD + 100 and "truncated" in event["body"]
    assert len(event["raw"]) < clog.MAX_FIELD + 100
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request %s", (body,), None)
    assert clog.TruncateRecords().filter(record)
    assert len(record.getMessage()) < clog.MAX_FIELD + 100
    assert clog.truncate("short") == "short"


async def test_huge_bodies_are_refused_before_they_are_read_and_answers_stay_small(
        api: str) -> None:  # noqa: F811 (the fixture)
    huge = json.dumps({"x": "a" * (2 << 20)}).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/api/v1/webhooks/github", data=huge) as resp:
            assert resp.status == 413 and len(await resp.read()) < 200
        unsigned = json.dumps({"x": "a" * 900_000}).encode()
        async with http.post(f"{api}/api/v1/webhooks/github", data=unsigned) as resp:
            assert resp.status == 401 and len(await resp.read()) < 200
