"""The content-addressed render cache through the real renderer service."""

from __future__ import annotations

import contextlib
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.rendering import RenderTools
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

ENVS = ("a", "b", "c")


def files(tool: Path, image: str = "1.0") -> dict[str, str]:
    # the tool is the operator's choice (--kustomize-binary), not conveyor.yaml's
    out = {
        "conveyor.yaml": "environments:\n" + "".join(
            f"  {e}:\n    path: overlays/{e}\n    render:\n      type: kustomize\n"
            for e in ENVS),
        "base/kustomization.yaml": "resources: [cm.yaml]\n",
        "base/cm.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
                        f"data:\n  image: \"{image}\"\n",
    }
    for e in ENVS:
        out[f"overlays/{e}/kustomization.yaml"] = (f"namespace: {e}\nresources: [../../base]\n"
                                                   f"nameSuffix: -{e}\n")
    return out


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[GitWatcher]:
    conveyor = Conveyor(settings, names=("renderer", "git-watcher"))
    await conveyor.start()
    try:
        watcher = conveyor.service("git-watcher")
        assert isinstance(watcher, GitWatcher)
        yield watcher
    finally:
        await conveyor.stop()


def renders(sha: str, count: int):  # type: ignore[no-untyped-def]
    def check(events: list[Event]) -> bool:
        return sum(e.type == ev.RENDER_SUCCEEDED and e.correlationid == sha
                   for e in events) >= count
    return check


async def test_unchanged_inputs_reuse_the_bundle_without_running_the_tool(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    tool = tmp_path / "kubectl-counting"
    tool.write_text(f"#!/bin/sh\necho x >> {calls}\nexec {Path(sys.executable).parent}/kubectl "
                    "\"$@\"\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", interval=3600.0,
                        render_tools=RenderTools(kustomize_binary=str(tool)))

    def tool_runs() -> int:
        # kustomize renders only: the binary's version query runs once per process
        lines = calls.read_text().splitlines() if calls.exists() else []
        return len(lines)

    first = repo.commit(files(tool), "initial")
    async with running(settings) as watcher:
        events = await wait_for_events(bus, renders(first, 3))
        misses = [e for e in events if e.type == ev.RENDER_SUCCEEDED]
        assert {e.data["cache"] for e in misses} == {"miss"}
        assert all(e.data["digest"].startswith("sha256:") and e.data["objects"] == 1
                   for e in misses)
        after_first = tool_runs()

        # conveyor.yaml changes (every environment is due) but no render input does
        text = files(tool)["conveyor.yaml"] + "# reviewed\n"
        second = repo.commit({"conveyor.yaml": text}, "comment")
        await watcher.poll()
        events = await wait_for_events(bus, renders(second, 3))
        hits = [e for e in events if e.type == ev.RENDER_SUCCEEDED and e.correlationid == second]
        assert {e.data["cache"] for e in hits} == {"hit"}
        assert {e.data["digest"] for e in hits} == {e.data["digest"] for e in misses}
        assert tool_runs() == after_first, "a cache hit ran the tool"

        # the shared base changes: every overlay renders again, with a new bundle
        third = repo.commit({"base/cm.yaml": files(tool, image="2.0")["base/cm.yaml"]}, "base")
        await watcher.poll()
        events = await wait_for_events(bus, renders(third, 3))
        fresh = [e for e in events if e.type == ev.RENDER_SUCCEEDED and e.correlationid == third]
        assert {e.data["cache"] for e in fresh} == {"miss"}
        assert not {e.data["digest"] for e in fresh} & {e.data["digest"] for e in misses}
        assert tool_runs() > after_first
