"""The dashboard at 1,000 environments in headless Chromium: every card, counts, search, filters,
groups, live updates, and a commit box that knows an environment name from a short sha.

The projection is fed real events through a real nats-server (no services: only the api and
its projector run), so the browser sees exactly what a fleet's api serves. Timing is measured in
``benchmarks/fleet.py``, never asserted here.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, async_api, pytestmark
from tests.test_fleet_api import api_for

__all__ = ["pytestmark"]  # skips without Chromium, like the other dashboard tests

FLEET = 1000


def deployed(env: str, sha: str, *, failed: bool = False, health: str = "") -> list[Event]:
    detected = new_event(ev.COMMIT_DETECTED, env=env, correlation=sha, key=f"{env}{sha}",
                         data={"revision": sha, "env": {"name": env, "generator": "fleet"}})
    out = [detected, new_event(ev.APPLY_FAILED if failed else ev.APPLY_SUCCEEDED, env=env,
                               correlation=sha, cause=detected,
                               data={"revision": sha, "error": "boom" if failed else ""})]
    if health:
        out.append(new_event(f"conveyor.health.{health.lower()}", env=env, correlation=sha,
                             cause=out[-1], data={"status": health}))
    return out


async def test_a_thousand_environments_render_filter_group_and_update(
        bus: EventBus, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    sha = "a" * 40
    events: list[Event] = []
    for i in range(FLEET):
        health = "Degraded" if i % 100 == 7 else "Healthy"
        events += deployed(f"e{i:04d}", sha, failed=i % 250 == 3, health=health)
    for start in range(0, len(events), 500):
        await bus.publish_all(events[start:start + 500])
    async with api_for(bus, nats_server, tmp_path) as url, \
            async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{url}/#/")
            await async_api.expect(page.locator("#env-cards li.card")).to_have_count(
                FLEET, timeout=WAIT_MS)
            counts = await page.text_content("#env-counts") or ""
            assert f"{FLEET} of {FLEET} environments" in counts
            assert "10 Degraded" in counts and "990 Healthy" in counts

            await page.fill("#env-search", "e05")
            await async_api.expect(page.locator("#env-cards li.card")).to_have_count(
                100, timeout=WAIT_MS)
            await page.fill("#env-search", "")
            await page.select_option("#env-outcome", "failed")
            await async_api.expect(page.locator("#env-cards li.card")).to_have_count(
                4, timeout=WAIT_MS)
            names = await page.eval_on_selector_all(
                "#env-cards li.card", "els => els.map(e => e.dataset.env)")
            assert names == ["e0003", "e0253", "e0503", "e0753"]
            await page.select_option("#env-outcome", "")
            await page.select_option("#env-group", "health")
            await async_api.expect(page.locator("#env-cards h3")).to_have_count(
                2, timeout=WAIT_MS)
            heads = await page.eval_on_selector_all("#env-cards h3", "els => els.map(e => "
                                                    "e.textContent)")
            assert heads == ["Degraded (10)", "Healthy (990)"]

            # a live change moves one card to its new group without a reload
            await bus.publish_all(deployed("e0500", "b" * 40, health="Degraded"))
            await async_api.expect(page.locator("#env-cards h3").first).to_have_text(
                "Degraded (11)", timeout=WAIT_MS)

            # the commit box: an environment's name that looks like a short sha opens it
            await page.fill("#commit-sha", "e0500")
            await page.press("#commit-sha", "Enter")
            await page.wait_for_selector('#env-card li.card[data-env="e0500"]', timeout=WAIT_MS)
            assert errors == []
        finally:
            await browser.close()
