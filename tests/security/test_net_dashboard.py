"""The dashboard with a token set, in a real headless Chromium: the data is behind a login
screen, the token lives in the tab's sessionStorage only and is sent as a header on every
fetch and on the live stream; a wrong token is refused; signing out forgets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from tests.security.net_support import (
    OPERATOR,
    READER,
    api_url,
    applied,
    deploys_next_commit,
    running,
    settings_for,
)
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
