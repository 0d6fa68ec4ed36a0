"""The dashboard's promotions view in a real headless Chromium: each promotion path, what both
ends run, the gate; it follows a release without a reload."""

from __future__ import annotations

from pathlib import Path

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.gitops.workflow import GitOps
from orchestrator.resources import Resources
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_dashboard import WAIT_MS, dashboard, finished, pytestmark  # noqa: F401

PROMOTION = "promotion:\n  prod: {from: dev, after: {healthyFor: 0s}}\n"


async def test_promotions_view_shows_each_path_and_follows_a_release(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    files = demo_files()
    files["conveyor.yaml"] += PROMOTION
    first = repo.commit(files, "initial")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        await dash.open("#/promotions")
        page = dash.page
        row = '#promotions tr[data-to="prod"]'
        await page.wait_for_selector(f'{row}[data-gate="open"]', timeout=WAIT_MS)
        cells = await page.locator(f"{row} td").all_text_contents()
        assert cells[:5] == ["dev", first[:7], "prod", f"{first[:7]} (the same)", "by hand"]
        assert cells[5].startswith("open: dev healthy on")
        assert await page.title() == "Promotions · Conveyor"

        await page.evaluate("window.__notReloaded = true")
        released = await GitOps(Resources.around(bus, dash.conveyor.settings),
                                environ={}).release("dev", ["nginx=nginx:1.28"])
        assert released.commit is not None
        await page.wait_for_selector(f'{row} td:nth-child(2) a.rev[title="{released.commit}"]',
                                     timeout=WAIT_MS)
        cells = await page.locator(f"{row} td").all_text_contents()
        assert cells[3] == first[:7]  # prod still runs the first commit
        assert await page.evaluate("window.__notReloaded") is True
    assert dash.errors == []
