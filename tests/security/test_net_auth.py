"""Finding 4 (reads open) and the low findings on tokens: with a token set, nothing but the
probes, signed webhooks and the empty page shell answers without one; the read token reads and
cannot act; the operator token does both; ``bearer`` in any case works; a blank token is none."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from conveyor.demo import demo_files
from conveyor.options import check_listen
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.settings import Settings
from tests.security.net_support import OPERATOR, READER, api_url, applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

READS = ["/api/v1/environments", "/api/v1/environments/dev", "/api/v1/events",
         "/api/v1/trace/abcdef1", "/api/v1/environments/dev/history", "/api/v1/metrics/dora",
         f"/api/v1/bundles/sha256:{'0' * 64}", "/metrics",
         "/api/v1/events/stream?after=0", "/api/v1/dashboard/stream?last=1",
         "/api/v1/environments/dev/objects", "/api/v1/environments/dev/changes",
         "/api/v1/promotions"]
CONTROLS = ["/api/v1/refresh", "/api/v1/environments/dev/sync", "/api/v1/replay",
            f"/api/v1/events/{'ab' * 8}/retry", "/api/v1/environments/dev/releases",
            "/api/v1/environments/dev/rollback", "/api/v1/environments/dev/promotions"]


async def status_of(http: aiohttp.ClientSession, method: str, url: str,
                    token: str | None = None, scheme: str = "Bearer") -> int:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    async with http.request(method, url, headers=headers) as resp:
        return resp.status  # streams: the status line is enough, the body is not read


async def test_every_read_needs_a_token_and_only_the_operator_may_act(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=OPERATOR,
                            read_token=READER)
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        async with aiohttp.ClientSession() as http:
            for path in READS:  # the attack: read state, events and bundles without a token
                assert await status_of(http, "GET", url + path) == 401, path
                assert await status_of(http, "GET", url + path, "wrong") == 401, path
                assert await status_of(http, "GET", url + path, READER) != 401, path
                assert await status_of(http, "GET", url + path, OPERATOR) != 401, path
            for path in CONTROLS:
                assert await status_of(http, "POST", url + path) == 401, path
                assert await status_of(http, "POST", url + path, READER) == 403, path
            # the scheme is case-insensitive
            for scheme in ("bearer", "BEARER", "Bearer"):
                assert await status_of(http, "GET", url + READS[0], READER, scheme) == 200
            assert await status_of(http, "GET", url + READS[0], READER, "Basic") == 401
            # public: probes, the page shell (no data in it), webhooks (signature-checked)
            assert await status_of(http, "GET", url + "/healthz") == 200
            assert await status_of(http, "GET", url + "/") == 200
            assert await status_of(http, "GET", url + "/static/app.js") == 200
            assert await status_of(http, "POST", url + "/api/v1/webhooks/github") == 401
            async with http.get(url + "/api/v1/environments", headers={
                    "Authorization": f"bearer {READER}"}) as resp:
                assert {e["name"] for e in (await resp.json())["environments"]} == {"dev", "prod"}
            # the operator token acts
            assert await status_of(http, "POST", url + "/api/v1/environments/dev/sync",
                                   OPERATOR) == 202
        await deploys_next_commit(conveyor, repo, bus)


async def test_a_read_token_alone_disables_control_for_everyone(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", read_token=READER)
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        async with aiohttp.ClientSession() as http:
            assert await status_of(http, "GET", url + "/api/v1/environments") == 401
            assert await status_of(http, "POST", url + "/api/v1/refresh") == 401
            assert await status_of(http, "POST", url + "/api/v1/refresh", READER) == 403
        await deploys_next_commit(conveyor, repo, bus)


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_token_counts_as_no_token(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", blank)
    monkeypatch.setenv("CONVEYOR_READ_TOKEN", blank)
    assert Settings.api_token_from_env() is None and Settings.read_token_from_env() is None
    settings = Settings(nats_url="", data_dir=Path("."), api_token=blank, read_token=blank)
    assert not settings.auth_enabled
    # and so a whitespace token does not let the api listen off loopback
    assert check_listen("0.0.0.0:8080") is not None
    monkeypatch.setenv("CONVEYOR_API_TOKEN", " tok\n")
    assert Settings.api_token_from_env() == "tok" and check_listen("0.0.0.0:8080") is None


async def test_a_blank_configured_token_leaves_the_loopback_api_open_as_before(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token="   ")
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        async with aiohttp.ClientSession() as http:
            # not "the empty token": a request with no token is not refused for a missing one
            assert await status_of(http, "GET", api_url(conveyor) + "/api/v1/environments") == 200
