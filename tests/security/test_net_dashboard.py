"""The dashboard with a token set, in a real headless Chromium: the data is behind a login
screen, the token lives in the tab's sessionStorage only and is sent as a header on every
fetch and on the live stream; a wrong token is refused; signing out forgets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from tests.security.net_support import OPERATOR, READER, api_url, applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
async_api = pytest.importorskip("playwright.async_api")


async def test_the_dashboard_asks_for_a_token_and_keeps_it_for_the_tab_only(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=OPERATOR,
                            read_token=READER)
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await (await browser.new_context()).new_page()
                sent: list[tuple[str, str]] = []
                page.on("request", lambda r: sent.append(
                    (r.url, r.headers.get("authorization", ""))))
                await page.goto(f"{url}/#/")
                # no token: the login screen, and no data on the page
                await page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
                assert await page.locator("#env-cards li.card").count() == 0
                # a wrong token is refused and said so
                await page.fill("#login-token", "not-a-token")
                await page.click("#login-form button[type=submit]")
                await page.wait_for_selector("#login-error:has-text('not accepted')",
                                             timeout=WAIT_MS)
                # the read token: cards and the live stream
                await page.fill("#login-token", READER)
                await page.click("#login-form button[type=submit]")
                await page.wait_for_selector('#env-cards li.card[data-env="dev"]',
                                             timeout=WAIT_MS)
                await page.wait_for_selector('#connection[data-state="live"]', timeout=WAIT_MS)
                assert await page.evaluate("sessionStorage.getItem('conveyor.token')") == READER
                assert await page.evaluate("localStorage.length") == 0
                assert await page.evaluate("document.cookie") == ""
                api_calls = [(u, a) for u, a in sent if "/api/v1/" in u]
                streamed = [a for u, a in api_calls if "/api/v1/dashboard/stream" in u]
                assert streamed and streamed[-1] == f"Bearer {READER}"
                assert all(READER not in u for u, _ in sent)  # never in a URL
                # a new commit arrives over the authenticated stream
                sha = await deploys_next_commit(conveyor, repo, bus)
                await page.wait_for_selector(
                    f'#event-stream li[data-revision="{sha}"]', timeout=WAIT_MS)
                # sign out: the token is gone, the login screen is back
                await page.click("#sign-out")
                await page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
                assert await page.evaluate("sessionStorage.getItem('conveyor.token')") is None
            finally:
                await browser.close()


ATTACKER_PAGE = """<!doctype html><html><body>
<form id="f" method="post" action="{target}/api/v1/refresh"></form>
<script>
  fetch("{target}/api/v1/environments/dev/sync", {{method: "POST", mode: "no-cors"}})
    .finally(() => document.getElementById("f").submit());
</script></body></html>"""


async def test_a_rebound_name_and_another_sites_page_get_nothing_from_a_tokenless_api(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    from aiohttp import web

    from orchestrator import subjects
    from orchestrator.domain import events as ev

    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        port = url.rsplit(":", 1)[1]
        async def attacker_page(_: web.Request) -> web.Response:
            return web.Response(text=ATTACKER_PAGE.format(target=url), content_type="text/html")

        attacker = web.Application()
        attacker.router.add_get("/", attacker_page)
        runner = web.AppRunner(attacker)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        attacker_port = runner.addresses[0][1]

        async def refreshes() -> int:
            return len([s async for s in bus.read(subjects.filter_for(ev.REFRESH_REQUESTED))])

        before = await refreshes()
        async with async_api.async_playwright() as pw:
            # evil.test resolves to 127.0.0.1: what a DNS-rebinding attack achieves
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
                *CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"])
            try:
                page = await (await browser.new_context()).new_page()
                answer = await page.goto(f"http://evil.test:{port}/api/v1/environments")
                assert answer is not None and answer.status == 421
                assert "dev" not in await page.content()
                # a page of another origin posts a form and a no-cors fetch at the api
                posted: list[int] = []
                tried: list[str] = []
                page.on("request", lambda r: tried.append(r.url)
                        if r.method == "POST" else None)
                page.on("response", lambda r: posted.append(r.status)
                        if r.request.method == "POST" else None)
                async with page.expect_response(lambda r: r.url.endswith("/api/v1/refresh")):
                    await page.goto(f"http://127.0.0.1:{attacker_port}/")
                # both were sent (the fetch's answer is opaque to the page), both refused
                assert {u.rsplit("/api/v1/", 1)[1] for u in tried} == {
                    "environments/dev/sync", "refresh"}
                assert posted and set(posted) == {403}
            finally:
                await browser.close()
                await runner.cleanup()
        assert await refreshes() == before  # nothing was triggered
        synced = [s async for s in bus.read(subjects.filter_for(ev.RENDER_SUCCEEDED))
                  if s.event.data.get("cause") == "sync"]
        assert synced == []
        await deploys_next_commit(conveyor, repo, bus)
