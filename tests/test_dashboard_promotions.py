"""The dashboard's promotions view in a real headless Chromium: each promotion path, what both
ends run, the gate; it follows a release without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

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

        # the actions: promote from the table, then roll back and release from an env's page
        await page.click(f'{row} button.promote')
        done = await page.wait_for_selector("#promote-result a.rev", timeout=WAIT_MS)
        assert done is not None
        promoted = await done.get_attribute("title")
        assert promoted == str(repo.repo.references["refs/heads/main"].target)
        assert "committed" in (await page.text_content("#promote-result") or "")
        await wait_for_events(bus, finished(str(promoted), {"prod"}))

        await dash.open("#/env/prod")
        await page.click("#rollback-button")
        back = await page.wait_for_selector("#action-result a.rev", timeout=WAIT_MS)
        assert back is not None
        assert await back.get_attribute("title") == str(
            repo.repo.references["refs/heads/main"].target)
        message = repo.repo[repo.repo.references["refs/heads/main"].target].message
        assert message.startswith(f"Roll back prod to {first[:7]}")

        await dash.open("#/env/dev")
        await page.fill("#release-image", "nginx=nginx")  # no tag: refused, with the reason
        await page.click("#release-form button")
        await page.wait_for_selector("#action-result .bad", timeout=WAIT_MS)
        assert "a tag" in (await page.text_content("#action-result") or "")
        await page.fill("#release-image", "nginx=nginx:1.29")
        await page.click("#release-form button")
        made = await page.wait_for_selector("#action-result a.rev", timeout=WAIT_MS)
        assert made is not None
        head = str(repo.repo.references["refs/heads/main"].target)
        assert await made.get_attribute("title") == head
        assert "Conveyor-Release: nginx=nginx:1.29" in repo.repo[head].message
    errors = [e for e in dash.errors if "/api/v1/environments/dev/releases" not in e]
    assert errors == []  # (the refused release's 400 is expected)


async def test_a_read_only_token_sees_the_refusal_and_nothing_is_committed(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from tests import test_dashboard

    files = demo_files()
    files["conveyor.yaml"] += PROMOTION
    first = repo.commit(files, "initial")
    real = test_dashboard.Settings

    def with_tokens(*args: object, **kwargs: object) -> object:
        return dataclasses.replace(real(*args, **kwargs),  # type: ignore[arg-type]
                                   api_token="operator-token", read_token="reader-token")

    # the dashboard helper's Conveyor, with an operator and a read-only token configured
    monkeypatch.setattr(test_dashboard, "Settings", with_tokens)
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        page = dash.page
        await page.goto(f"{dash.url}/#/env/prod")
        await page.fill("#login-token", "reader-token")
        await page.click("#login-form button")
        await page.wait_for_selector('#connection[data-state="live"]', timeout=WAIT_MS)
        await page.click("#rollback-button")
        await page.wait_for_selector("#action-result .bad", timeout=WAIT_MS)
        text = await page.text_content("#action-result") or ""
        assert text.startswith("Roll back refused (403)")
    assert str(repo.repo.references["refs/heads/main"].target) == first
