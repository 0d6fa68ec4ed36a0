"""Time of one release written back to Git, on a big repository served by a real git remote.

Run: .venv/bin/python -m benchmarks.release [--files 20000] [--rounds 15]

The upstream is a bare repository of ``--files`` files (plus a Kustomize overlay ``envs/dev``)
served by ``git daemon`` with push enabled; an embedded nats-server takes the events. Each
round, alternating the two so both see the same repository and machine load:

- **conveyor**: ``GitOps.release("dev", ["web=web:1.N"])``: fetch the branch into its mirror,
  read conveyor.yaml, edit the kustomization (round-trip YAML), write the new tree from the
  head's (only the changed path is rewritten), commit, push, publish the event;
- **git CLI**: the floor of doing it by hand in a clone that already holds a checkout:
  ``git pull --ff-only``, edit the file, ``git commit -a``, ``git push``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import pygit2

from orchestrator import logging as clog
from orchestrator.adapters import git_write
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.gitops.workflow import GitOps
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from tests.support.gitservers import GitDaemon, git

KUSTOMIZATION = "resources: []\nimages:\n  - name: web   # released by CI\n    newTag: '1.0'\n"


def build(bare: Path, files: int) -> None:
    pygit2.init_repository(str(bare), bare=True, initial_head="main")
    content = {f"apps/g{i % 50:02d}/f{i:05d}.yaml": f"kind: ConfigMap\nmetadata: {{name: f{i}}}\n"
               .encode() for i in range(files)}
    content["conveyor.yaml"] = b"environments:\n  dev: {path: envs/dev}\n"
    content["envs/dev/kustomization.yaml"] = KUSTOMIZATION.encode()
    tree = git_write.build_tree(bare, content)
    repo = pygit2.Repository(str(bare))
    sig = pygit2.Signature("bench", "bench@localhost")
    repo.create_commit("refs/heads/main", sig, sig, "initial", pygit2.Oid(hex=tree), [])


def by_hand(clone: Path, version: str) -> None:
    git(clone, "pull", "-q", "--ff-only", "origin", "main")
    file = clone / "envs/dev/kustomization.yaml"
    text = file.read_text()
    start = text.index("newTag: ")
    file.write_text(text[:start] + f"newTag: '{version}'\n")
    git(clone, "commit", "-q", "-am", f"web {version}")
    git(clone, "push", "-q", "origin", "HEAD:main")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    clog.configure("warning", False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        build(root / "srv" / "repo.git", args.files)
        print(f"repository: {args.files} files, built in {time.perf_counter() - started:.1f} s")
        nats = EmbeddedNats(root / "nats")
        await nats.start()
        bus = await EventBus.connect(nats.url, name="bench")
        try:
            async with GitDaemon(root / "srv", receive_pack=True) as daemon:
                url = daemon.url("repo.git")
                git(root, "clone", "-q", url, str(root / "clone"))
                settings = Settings(nats_url=nats.url, data_dir=root / "data", repo=url,
                                    branch="main")
                ops = GitOps(Resources.around(bus, settings), environ={})
                await ops.release("dev", ["web=web:0.1"])  # the mirror's first fetch
                timings: dict[str, list[float]] = {"conveyor": [], "git CLI": []}
                for i in range(args.rounds):
                    t = time.perf_counter()
                    await ops.release("dev", [f"web=web:1.{i}"])
                    timings["conveyor"].append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    await asyncio.to_thread(by_hand, root / "clone", f"2.{i}")
                    timings["git CLI"].append((time.perf_counter() - t) * 1000)
        finally:
            await bus.close()
            await nats.stop()
    print(f"{'mode':<10}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}   ({args.rounds} rounds)")
    for mode, values in timings.items():
        print(f"{mode:<10}{pct(values, 0.5):>10.1f}{pct(values, 0.95):>10.1f}"
              f"{statistics.mean(values):>10.1f}")


if __name__ == "__main__":
    asyncio.run(main())
