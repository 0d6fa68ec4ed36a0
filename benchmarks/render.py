"""Render cache at monorepo scale: 200 Kustomize overlays of one shared base.

Run: .venv/bin/python benchmarks/render.py [--overlays 200]

Three timings through the real git-watcher and renderer services (one nats-server, one
process), from the watcher's trigger to the last ``render.succeeded`` needed:
1. the shared base changes: 200 renders needed;
2. one overlay changes (and conveyor.yaml, so every environment is announced): 1 render,
   199 cache hits;
3. one overlay changes alone: 1 environment announced, 1 render;
against ``kubectl kustomize`` run 200 times sequentially on the same tree in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conveyor.app import Conveyor
from orchestrator import logging as clog
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.domain.events import Event
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo

KUBECTL = str(Path(sys.executable).parent / "kubectl")


def base(image: str) -> dict[str, str]:
    return {
        "base/kustomization.yaml": "resources: [deployment.yaml, service.yaml]\n",
        "base/deployment.yaml": (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"
            "  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n"
            "      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n"
            f"          image: nginx:{image}\n"),
        "base/service.yaml": ("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
                              "  selector: {app: web}\n  ports: [{port: 80}]\n"),
    }


def overlay(i: int, replicas: int = 1) -> str:
    return (f"namespace: team-{i}\nresources: [../../base]\nlabels:\n"
            f"  - pairs: {{team: t{i}}}\nreplicas:\n  - name: web\n    count: {replicas}\n")


def config(n: int, comment: str = "") -> str:
    return "environments:\n" + "".join(
        f"  team-{i}:\n    path: overlays/team-{i}\n" for i in range(n)) + comment


async def run(n: int) -> None:
    clog.configure("warning", json_logs=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = Repo(root / "repo")
        files = {"conveyor.yaml": config(n), **base("1.0")}
        files.update({f"overlays/team-{i}/kustomization.yaml": overlay(i) for i in range(n)})
        repo.commit(files, "initial")

        t0 = time.perf_counter()
        for i in range(n):
            subprocess.run([KUBECTL, "kustomize", str(repo.path / f"overlays/team-{i}")],
                           check=True, capture_output=True)
        cli = time.perf_counter() - t0

        server = EmbeddedNats(root / "nats")
        url = await server.start()
        settings = Settings(nats_url=url, data_dir=root / "data", repo=str(repo.path),
                            branch="main", interval=3600.0)
        conveyor = Conveyor(settings, names=("renderer", "git-watcher"))
        await conveyor.start()
        watcher = conveyor.service("git-watcher")
        assert isinstance(watcher, GitWatcher) and conveyor.bus is not None
        nc = conveyor.bus.nc
        seen: dict[str, list[Event]] = {}
        changed = asyncio.Event()

        async def on_render(msg: object) -> None:
            event = Event.from_json(msg.data)  # type: ignore[attr-defined]
            seen.setdefault(event.correlationid, []).append(event)
            changed.set()

        await nc.subscribe("conveyor.events.*.render.succeeded", cb=on_render)

        async def timed(sha_commit: str | None, expected: int) -> tuple[float, list[Event]]:
            start = time.perf_counter()
            await watcher.poll()
            assert sha_commit is not None
            while len(seen.get(sha_commit, [])) < expected:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 300)
            return time.perf_counter() - start, seen[sha_commit]

        # warm-up: the initial commit renders everything once
        first = repo.head()
        assert first is not None
        while len(seen.get(first, [])) < n:
            changed.clear()
            await asyncio.wait_for(changed.wait(), 300)

        sha = repo.commit(base("1.1"), "base image 1.1")
        t_base, evs = await timed(sha, n)
        base_misses = sum(e.data.get("cache") == "miss" for e in evs)

        sha = repo.commit({"conveyor.yaml": config(n, "# touched\n"),
                           "overlays/team-7/kustomization.yaml": overlay(7, 3)}, "one + config")
        t_one_all, evs = await timed(sha, n)
        hits = sum(e.data.get("cache") == "hit" for e in evs)
        misses = sum(e.data.get("cache") == "miss" for e in evs)

        sha = repo.commit({"overlays/team-9/kustomization.yaml": overlay(9, 2)}, "one overlay")
        t_one, evs = await timed(sha, 1)
        await conveyor.stop()
        await server.stop()

    print(f"kubectl kustomize x{n}, sequential:            {cli:7.2f} s")
    print(f"conveyor, shared base changed ({base_misses} renders):   {t_base:7.2f} s")
    print(f"conveyor, one overlay + conveyor.yaml ({misses} render, {hits} cache hits): "
          f"{t_one_all:7.2f} s")
    print(f"conveyor, one overlay alone (1 env announced, {len(evs)} render): {t_one:7.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--overlays", type=int, default=200)
    asyncio.run(run(parser.parse_args().overlays))
