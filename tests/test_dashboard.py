"""The dashboard in a real headless Chromium, driven by Playwright, against running services.

Each test runs every service in this process on a real nats-server and a real git repository,
opens the page served by the api and awaits DOM conditions (never sleeps). Chromium is Debian's
``chromium`` package (``playwright install`` cannot download browsers here); without it these
tests skip and say why. ``CONVEYOR_SCREENSHOTS=1`` also writes ``docs/screenshots/*.png``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.settings import Settings
from services.api.app import ApiService
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (CI installs it) "
           "or set CONVEYOR_CHROMIUM")
async_api = pytest.importorskip("playwright.async_api",
                                reason="the playwright Python package is not installed")

BROKEN_CONFIG = {"conveyor.yaml": "environments:\n  app:\n    path: app\n",
                 "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"
                                "data:\n  k: v\n"}
BROKEN_YAML = {"app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"
                              "data:\n  k: [unclosed\n"}


def finished(sha: str, envs: set[str]) -> Callable[[list[Event]], bool]:
    done = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}

    def check(events: list[Event]) -> bool:
        return {e.subject for e in events if e.correlationid == sha and e.type in done} >= envs

    return check


@dataclass
class Dashboard:
    """A running Conveyor, its api's URL, and a browser page with the errors it reported."""

    conveyor: Conveyor
    bus: EventBus
    url: str
    page: Page
    errors: list[str] = field(default_factory=list)

    async def open(self, route: str = "#/") -> None:
        await self.page.goto(f"{self.url}/{route}")
        await self.page.wait_for_selector('#connection[data-state="live"]', timeout=WAIT_MS)

    async def refresh(self) -> None:
        """Ask the watcher to poll, the way a user or a webhook would."""
        async with aiohttp.ClientSession() as http, \
                http.post(f"{self.url}/api/v1/refresh") as resp:
            assert resp.status == 202

    async def shot(self, name: str) -> None:
        if os.environ.get("CONVEYOR_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


@contextlib.asynccontextmanager
async def dashboard(repo: Repo, nats: EmbeddedNats, bus: EventBus, data: Path,
                    *, width: int = 1280, height: int = 900) -> AsyncIterator[Dashboard]:
    settings = Settings(nats_url=nats.url, data_dir=data, repo=str(repo.path), branch="main",
                        listen="127.0.0.1:0", interval=3600.0)  # polls only when asked
    conveyor = Conveyor(settings)
    await conveyor.start()
    try:
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": width, "height": height},
                                                    color_scheme="light")
                page = await context.new_page()
                dash = Dashboard(conveyor, bus, api.url, page)
                page.on("pageerror", lambda exc: dash.errors.append(f"pageerror: {exc}"))
                page.on("response", lambda resp: dash.errors.append(
                    f"HTTP {resp.status}: {resp.url}") if resp.status >= 400
                    and not degraded(resp.status, resp.url) else None)
                yield dash
                await context.close()
            finally:
                await browser.close()
    finally:
        await conveyor.stop()


def degraded(status: int, url: str) -> bool:
    """A 404 the page expects and handles: an api without the history endpoint."""
    return status == 404 and re.search(r"/api/v1/environments/[^/]+/history", url) is not None


def card(env: str, part: str = "") -> str:
    return f'#env-cards li.card[data-env="{env}"] {part}'.strip()


async def test_cards_show_environments_and_follow_a_new_commit_without_reload(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        await dash.open()
        page = dash.page
        for env in ("dev", "prod"):
            await page.wait_for_selector(
                card(env, f'[data-field="applied"] a.rev[title="{first}"]'), timeout=WAIT_MS)
            assert await page.text_content(card(env, '[data-field="sync"]')) == "In sync"
            assert await page.text_content(card(env, '[data-field="outcome"] .outcome')) \
                == "apply.succeeded"
        assert await page.text_content(card("dev", "h2")) == "dev"
        await page.wait_for_selector(
            f'#event-stream li[data-type="{ev.APPLY_SUCCEEDED}"][data-revision="{first}"]',
            timeout=WAIT_MS)
        await dash.shot("cards.png")

        # a commit made now, with markup in its message, reaches the open page by itself
        await page.evaluate("window.__notReloaded = true")
        hostile = '<img src=x onerror="window.__xss=1"><b id="xss">bold</b>'
        second = repo.commit(demo_files(tag="1.28", dev_replicas=3), hostile)
        await dash.refresh()
        detected = await page.wait_for_selector(
            f'#event-stream li[data-type="{ev.COMMIT_DETECTED}"][data-revision="{second}"]',
            timeout=WAIT_MS)
        assert detected is not None
        assert await detected.eval_on_selector(".event-text", "el => el.textContent") == hostile
        for env in ("dev", "prod"):
            await page.wait_for_selector(
                card(env, f'[data-field="applied"] a.rev[title="{second}"]'), timeout=WAIT_MS)
            assert await page.text_content(card(env, '[data-field="desired"] a.rev')) \
                == second[:7]
        assert await page.evaluate("window.__notReloaded") is True
        assert await page.evaluate("document.getElementById('xss') === null")
        assert await page.evaluate("window.__xss === undefined")
        assert await page.locator("#event-stream img").count() == 0
    assert dash.errors == []


async def test_commit_view_shows_the_trace_with_stage_timings(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        await dash.open()
        page = dash.page
        # follow the desired revision's link from a card: a hash route, no page load
        await page.click(card("dev", f'[data-field="desired"] a.rev[title="{first}"]'))
        await page.wait_for_selector("#view-commit:not([hidden])", timeout=WAIT_MS)
        assert page.url.endswith(f"#/commit/{first}")
        assert await page.is_hidden("#view-home")
        await page.wait_for_selector('#commit-e2e tbody tr[data-env="prod"]', timeout=WAIT_MS)
        assert await page.text_content("#commit-title") == f"Commit {first[:7]}"
        assert "initial" in (await page.text_content("#commit-meta") or "")
        rows = page.locator("#commit-e2e tbody tr")
        assert await rows.count() == 2
        dev = page.locator('#commit-e2e tbody tr[data-env="dev"]')
        stages = await dev.locator(".stages li").evaluate_all(
            "els => els.map(e => e.dataset.type)")
        assert stages == [ev.COMMIT_DETECTED, ev.RENDER_SUCCEEDED, ev.APPLY_STARTED,
                          ev.APPLY_SUCCEEDED]
        timing = await dev.locator(".stages li .stage-ms").all_text_contents()
        assert timing[0] == "start" and all(t.endswith(("ms", "s")) for t in timing[1:])
        assert (await dev.locator("td.num").text_content() or "").endswith(("ms", "s"))
        assert await dev.locator(".outcome").text_content() == "apply.succeeded"
        # the causal tree: detected -> render.succeeded -> apply.succeeded, each hop timed
        chain = page.locator(
            f'#commit-tree > li[data-type="{ev.COMMIT_DETECTED}"][data-env="dev"]'
            f' > ol > li[data-type="{ev.RENDER_SUCCEEDED}"]'
            f' > ol > li[data-type="{ev.APPLY_SUCCEEDED}"]')
        assert await chain.count() == 1
        assert (await chain.locator(":scope > .node-head .latency").text_content()
                or "").startswith("+")
        await dash.shot("commit-trace.png")

        # an unknown commit says so instead of failing
        await page.evaluate("location.hash = '#/commit/deadbeef'")
        await page.locator("#commit-status", has_text="No events for this commit").wait_for(
            timeout=WAIT_MS)
    assert dash.errors == []


@pytest.mark.parametrize("history_endpoint", [True, False],
                         ids=["history-endpoint", "events-fallback"])
async def test_environment_history_lists_failures_and_grows_live(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        history_endpoint: bool) -> None:
    first = repo.commit(BROKEN_CONFIG, "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        page = dash.page
        if not history_endpoint:  # an api without /environments/NAME/history
            await page.route("**/api/v1/environments/*/history*",
                             lambda route: route.fulfill(status=404, body="{}"))
        await wait_for_events(bus, finished(first, {"app"}))
        await dash.open("#/env/app")
        await page.wait_for_selector(
            f'#env-history tbody tr[data-outcome="succeeded"][data-revision="{first}"]',
            timeout=WAIT_MS)
        assert await page.text_content("#env-title") == "app"
        await page.wait_for_selector('#env-card li.card[data-env="app"]', timeout=WAIT_MS)

        bad = repo.commit(BROKEN_YAML, "broken")
        await dash.refresh()
        failed = page.locator(f'#env-history tbody tr.failed[data-outcome="render-failed"]'
                              f'[data-revision="{bad}"]')
        await failed.wait_for(timeout=WAIT_MS)
        assert "app/cm.yaml:7" in (await failed.locator("td.error").text_content() or "")
        assert await failed.locator("td .outcome").text_content() == "render failed"
        rows = await page.locator("#env-history tbody tr").evaluate_all(
            "els => els.map(e => [e.dataset.outcome, e.dataset.revision])")
        assert rows == [["render-failed", bad], ["succeeded", first]]  # newest first
        await page.wait_for_selector('#env-card [data-field="sync"].bad', timeout=WAIT_MS)
        assert "1 failure" in (await page.text_content("#env-status") or "")
        # the card keeps what is really running: the last good commit
        assert await page.text_content('#env-card [data-field="applied"] a.rev') == first[:7]
        if history_endpoint:
            await dash.shot("env-history.png")
    assert dash.errors == []


async def test_phone_width_stacks_without_horizontal_scrolling(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data",
                         width=390, height=844) as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        page = dash.page
        for route in ("#/", f"#/commit/{first}", "#/env/dev"):
            await dash.open(route)
            ready = {"#/": card("prod"), "#/env/dev": "#env-history tbody tr",
                     f"#/commit/{first}": "#commit-e2e tbody tr"}[route]
            await page.wait_for_selector(ready, timeout=WAIT_MS)
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            wide = await page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => "
                "e.getBoundingClientRect().right > document.documentElement.clientWidth)"
                ".slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)")
            assert overflow <= 0, f"{route} scrolls sideways by {overflow}px: {wide}"
        await dash.open("#/")
        await page.wait_for_selector(card("prod"), timeout=WAIT_MS)
        boxes = [await page.locator(card(env)).bounding_box() for env in ("dev", "prod")]
        assert all(b is not None for b in boxes)
        dev, prod = boxes
        assert dev is not None and prod is not None
        assert prod["y"] > dev["y"] and prod["x"] == dev["x"]  # one column
        stream = await page.locator("#event-stream").bounding_box()
        assert stream is not None and stream["y"] > prod["y"]  # the stream below the cards
        await dash.shot("phone.png")
    assert dash.errors == []


async def test_keyboard_and_screen_reader_basics(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        await dash.open()
        page = dash.page
        await page.wait_for_selector(card("dev"), timeout=WAIT_MS)
        assert await page.get_attribute("html", "lang") == "en"
        assert await page.locator("main").count() == 1
        assert await page.get_attribute("#event-stream", "role") == "log"
        assert await page.get_attribute("#connection", "role") == "status"
        # every card is an article named by its heading; ids are unique on the page
        labelled = await page.locator(card("dev", "article")).get_attribute("aria-labelledby")
        assert labelled and await page.locator(f"#{labelled}").text_content() == "dev"
        duplicates = await page.evaluate(
            "(() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);"
            " return ids.filter((id, i) => ids.indexOf(id) !== i); })()")
        assert duplicates == []
        # the search box takes a SHA and routes to the commit view, focus on its heading
        await page.fill("#commit-sha", first[:10])
        await page.press("#commit-sha", "Enter")
        await page.wait_for_selector('#commit-e2e tbody tr[data-env="dev"]', timeout=WAIT_MS)
        assert await page.evaluate("document.activeElement.id") == "commit-title"
        # the skip link moves focus to the content without leaving the view
        await page.focus("#skip-link")
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "main"
        assert await page.is_visible("#view-commit")
    assert dash.errors == []
