"""The API at fleet size: environments filtered, counted and paged; events newest page first."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands import client
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.listing import EnvFilter, ListingError, decode_cursor, page
from orchestrator.domain.state import EnvState
from orchestrator.projector import Projector
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api.app import build_app


def states() -> list[EnvState]:
    out = []
    for i in range(30):
        outcome = ev.APPLY_FAILED if i % 10 == 3 else ev.APPLY_SUCCEEDED
        out.append(EnvState(name=f"e{i:03d}", last_outcome=outcome,
                            health="Degraded" if i % 10 == 7 else "Healthy",
                            generator="fleet" if i < 20 else ""))
    return out


def test_pages_walk_every_selected_environment_once_in_name_order() -> None:
    seen: list[str] = []
    cursor = None
    while True:
        got = page(states(), EnvFilter(), limit=7, cursor=cursor)
        seen += [s.name for s in got.items]
        assert got.total == got.matched == 30
        if got.next is None:
            break
        cursor = got.next
    assert seen == sorted(s.name for s in states())


def test_filters_select_and_count_over_the_whole_selection() -> None:
    got = page(states(), EnvFilter.from_query({"outcome": "failed", "generator": "fleet"}), 1)
    assert [s.name for s in got.items] == ["e003"]
    assert got.matched == 2 and got.next is not None
    assert got.counts["outcome"] == {"failed": 2}
    got = page(states(), EnvFilter.from_query({"health": "degraded,missing", "prefix": "e02"}))
    assert [s.name for s in got.items] == ["e027"]
    got = page(states(), EnvFilter.from_query({"generator": ""}))
    assert got.matched == 10 and got.counts["generator"] == {"": 10}


def test_bad_cursors_and_filters_are_listing_errors() -> None:
    with pytest.raises(ListingError):
        decode_cursor("%%%")
    with pytest.raises(ListingError):
        EnvFilter.from_query({"in_flight": "maybe"})


@contextlib.asynccontextmanager
async def api_for(bus: EventBus, nats: EmbeddedNats, tmp: Path) -> AsyncIterator[str]:
    """The api over a projector that has folded every event already in the log."""
    projector = Projector(bus)
    await projector.start()
    end = await bus.last_seq()
    async with asyncio.timeout(120), projector.changed:
        await projector.changed.wait_for(lambda: projector.position >= end)
    runner = web.AppRunner(build_app(Resources.around(bus, Settings(
        nats_url=nats.url, data_dir=tmp / "data", listen="127.0.0.1:0")), projector))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        await projector.stop()


def outcome(env: str, sha: str, failed: bool) -> list[Event]:
    detected = new_event(ev.COMMIT_DETECTED, env=env, correlation=sha, key=sha,
                         data={"revision": sha, "env": {"name": env, "generator": "g"}})
    end = new_event(ev.APPLY_FAILED if failed else ev.APPLY_SUCCEEDED, env=env,
                    correlation=sha, cause=detected, data={"revision": sha})
    return [detected, end]


async def test_api_pages_environments_and_events(bus: EventBus, nats_server: EmbeddedNats,
                                                 tmp_path: Path) -> None:
    names = [f"env{i:02d}" for i in range(25)]
    for i, env in enumerate(names):
        await bus.publish_all(outcome(env, f"{i:040x}", failed=i in (4, 19)))
    async with api_for(bus, nats_server, tmp_path) as url, aiohttp.ClientSession() as http:
        async def get(path: str, **params: Any) -> tuple[int, Any]:
            async with http.get(url + path, params=params) as resp:
                return resp.status, await resp.json()

        status, body = await get("/api/v1/environments", limit="10", outcome="failed")
        assert status == 200
        assert [e["name"] for e in body["environments"]] == ["env04", "env19"]
        assert body["counts"]["outcome"] == {"failed": 2} and body["continue"] is None
        assert body["environments"][0]["generator"] == "g"
        listed: list[str] = []
        token = ""
        while True:
            _, body = await get("/api/v1/environments", limit="10",
                                **({"continue": token} if token else {}))
            listed += [e["name"] for e in body["environments"]]
            if not body["continue"]:
                break
            token = body["continue"]
        assert listed == names
        assert (await get("/api/v1/environments", limit="0"))[0] == 400
        assert (await get("/api/v1/environments", limit="1001"))[0] == 400
        assert len((await get("/api/v1/environments", limit="1000"))[1]["environments"]) == 25
        assert (await get("/api/v1/environments", **{"continue": "!!"}))[0] == 400

        # events: the newest page by default, a cursor to the page before it
        _, body = await get("/api/v1/events", limit="4")
        seqs = [e["sequence"] for e in body["events"]]
        assert seqs == [47, 48, 49, 50] and body["next"] == {"before": 47}
        _, older = await get("/api/v1/events", limit="4", before="47")
        assert [e["sequence"] for e in older["events"]] == [43, 44, 45, 46]
        _, sparse = await get("/api/v1/events", env="env01")
        assert [e["type"] for e in sparse["events"]] == [ev.COMMIT_DETECTED, ev.APPLY_SUCCEEDED]
        _, oldest = await get("/api/v1/events", after="0", limit="3")
        assert [e["sequence"] for e in oldest["events"]] == [1, 2, 3]
        assert oldest["next"] == {"after": 3}
        assert (await get("/api/v1/events", before="x"))[0] == 400

        # conveyor status summarises a fleet and lists only what needs attention
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await client.status(argparse.Namespace(
                api=url, output="text", all=False, outcome=None, health=None, prefix=None,
                generator=None))
        assert code == 0
        lines = out.getvalue().splitlines()
        assert "25 environments: 2 failed, 23 succeeded" in lines[0]
        assert [ln.split()[0] for ln in lines[3:]] == ["env04", "env19"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await client.status(argparse.Namespace(
                api=url, output="text", all=True, outcome=None, health=None, prefix="env2",
                generator=None))
        assert [ln.split()[0] for ln in out.getvalue().splitlines()[1:]] == \
            [f"env{i}" for i in range(20, 25)]
