"""Time to detect and announce a new commit on a big repository, served by a real git remote.

Run: .venv/bin/python benchmarks/fetch.py [--commits 10000] [--files 5000] [--rounds 15]
                                          [--transport git|http]

The upstream is a bare repository of ``--commits`` commits and ``--files`` files, built in a
second or two with ``git fast-import``, served over git:// (``git daemon``) or smart HTTP
(``git http-backend``) from ``tests.support.gitservers``. Conveyor's api and git-watcher
run in this process on an embedded nats-server, with polling off (only triggers).

Each round writes one commit upstream (one file of the first environment's directory changed)
and times, from the moment the commit exists until the figure's end:

- **webhook**: a signed generic push ``POST /api/v1/webhooks/generic`` -> the
  ``conveyor.commit.detected`` of that commit is received (core NATS subscription);
- **poll**: ``watcher.poll()`` (what the timer does) -> the same;
- **git CLI**: ``git fetch`` + ``git diff --name-only old new`` on a clone of the same remote:
  the floor of "find out what changed", without deciding or announcing anything.

Modes alternate within every round so each sees the same repository size and machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import pygit2

from conveyor.app import Conveyor
from orchestrator import logging as clog
from orchestrator.domain.events import Event
from orchestrator.domain.webhooks import sign
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import GitDaemon, GitHttpServer, git, git_env

SECRET = "benchmark-webhook-secret"
GROUPS = 50
ENVS = 10


def path_of(i: int) -> str:
    return f"apps/g{i % GROUPS:02d}/f{i:05d}.yaml"


def manifest(i: int, v: int) -> bytes:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f{i}\ndata:\n"
            f"  v: '{v}'\n").encode()


def conveyor_yaml() -> bytes:
    envs = "".join(f"  env{n:02d}: {{path: apps/g{n:02d}}}\n" for n in range(ENVS))
    return f"environments:\n{envs}".encode()


def build(bare: Path, commits: int, files: int) -> float:
    """A bare repository of ``commits`` commits and ``files`` files via git fast-import."""
    started = time.perf_counter()
    pygit2.init_repository(str(bare), bare=True, initial_head="main")
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=bare, env=git_env(),
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    out = proc.stdin
    when = 1_700_000_000

    def data(payload: bytes) -> None:
        out.write(b"data %d\n" % len(payload))
        out.write(payload)
        out.write(b"\n")

    out.write(b"commit refs/heads/main\n")
    out.write(b"committer Bench <bench@conveyor.invalid> %d +0000\n" % when)
    data(b"initial: %d files" % files)
    out.write(b"M 100644 inline conveyor.yaml\n")
    data(conveyor_yaml())
    for i in range(files - 1):
        out.write(f"M 100644 inline {path_of(i)}\n".encode())
        data(manifest(i, 0))
    for c in range(1, commits):
        i = (c * 7919) % (files - 1)  # spread changes over the files
        out.write(b"commit refs/heads/main\n")
        out.write(b"committer Bench <bench@conveyor.invalid> %d +0000\n" % (when + c))
        data(b"change %d" % c)
        out.write(f"M 100644 inline {path_of(i)}\n".encode())
        data(manifest(i, c))
    out.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    git(bare, "gc", "-q", "--auto")
    return time.perf_counter() - started


def new_commit(bare: Path, v: int) -> str:
    """One more commit on main changing a file of env00's directory (no work tree)."""
    repo = pygit2.Repository(str(bare))
    parent = repo.get(repo.references["refs/heads/main"].target)
    assert isinstance(parent, pygit2.Commit)
    index = pygit2.Index()
    index.read_tree(parent.tree)
    blob = repo.create_blob(manifest(0, 100_000 + v))
    index.add(pygit2.IndexEntry(path_of(0), blob, pygit2.enums.FileMode.BLOB))
    tree = index.write_tree(repo)
    sig = pygit2.Signature("Bench", "bench@conveyor.invalid")
    return str(repo.create_commit("refs/heads/main", sig, sig, f"bench {v}", tree,
                                  [parent.id]))


def cli_fetch(clone: Path, old: str) -> tuple[str, str]:
    """``git fetch`` then ``git diff --name-only`` from the last seen head: the CLI's way."""
    git(clone, "fetch", "-q", "origin", "main")
    new = git(clone, "rev-parse", "origin/main")
    return new, git(clone, "diff", "--name-only", old, new)


def stats(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"{name:<34} p50 {statistics.median(values):8.1f} ms   p95 {p95:8.1f} ms   "
            f"min {ordered[0]:8.1f} ms   max {ordered[-1]:8.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--transport", choices=("git", "http"), default="git")
    args = parser.parse_args()
    clog.configure(level="error")
    os.environ["CONVEYOR_WEBHOOK_SECRET"] = SECRET

    with tempfile.TemporaryDirectory(prefix="conveyor-fetch-bench-") as tmp:
        root = Path(tmp)
        (root / "srv").mkdir()
        bare = root / "srv" / "big.git"
        built = build(bare, args.commits, args.files)
        print(f"upstream: {args.commits} commits, {args.files} files, built in {built:.1f} s "
              f"with git fast-import")
        server: GitDaemon | GitHttpServer = (GitDaemon(root / "srv") if args.transport == "git"
                                             else GitHttpServer(root / "srv"))
        async with server:
            url = server.url("big.git")
            t0 = time.perf_counter()
            # the CLI runs in a thread: the HTTP server lives in this event loop
            await asyncio.to_thread(git, root, "clone", "-q", "--no-checkout", url,
                                    str(root / "cli"))
            print(f"git clone (CLI) over {args.transport}: {time.perf_counter() - t0:.2f} s")

            settings = Settings(nats_url="", data_dir=root / "data", repo=url, branch="main",
                                listen="127.0.0.1:0", interval=3600.0)
            conveyor = Conveyor(settings, names=("api", "git-watcher"))
            seen: dict[str, asyncio.Future[float]] = {}
            t0 = time.perf_counter()
            await conveyor.start()
            assert conveyor.bus is not None

            async def on_detected(msg: object) -> None:
                event = Event.from_json(msg.data)  # type: ignore[attr-defined]
                future = seen.get(event.correlationid)
                if future is not None and not future.done():
                    future.set_result(time.perf_counter())

            sub = await conveyor.bus.nc.subscribe("conveyor.events.*.commit.detected",
                                                  cb=on_detected)
            head = git(bare, "rev-parse", "main")
            seen[head] = asyncio.get_running_loop().create_future()
            watcher = conveyor.service("git-watcher")
            api = conveyor.service("api")
            assert isinstance(watcher, GitWatcher) and isinstance(api, ApiService)
            await watcher.poll()  # the start-up poll may have beaten the subscription
            if not seen[head].done():
                await asyncio.wait_for(seen[head], 120)
            print(f"conveyor first sight (mirror fetch of {args.commits} commits + announce): "
                  f"{time.perf_counter() - t0:.2f} s")

            results: dict[str, list[float]] = {"webhook": [], "poll": [], "cli": []}
            cli_old = git(root / "cli", "rev-parse", "origin/main")
            async with aiohttp.ClientSession() as http:
                for r in range(args.rounds):
                    # webhook
                    sha = new_commit(bare, 2 * r)
                    seen[sha] = asyncio.get_running_loop().create_future()
                    start = time.perf_counter()
                    body = json.dumps({"repository": url, "ref": "refs/heads/main",
                                       "after": sha}).encode()
                    headers = {"X-Conveyor-Event": "push", "X-Conveyor-Delivery": f"b{r}",
                               "Content-Type": "application/json",
                               **sign("generic", body, SECRET)}
                    async with http.post(f"{api.url}/api/v1/webhooks/generic", data=body,
                                         headers=headers) as resp:
                        assert resp.status == 202, await resp.text()
                    results["webhook"].append(
                        (await asyncio.wait_for(seen[sha], 60) - start) * 1000)
                    # poll
                    sha = new_commit(bare, 2 * r + 1)
                    seen[sha] = asyncio.get_running_loop().create_future()
                    start = time.perf_counter()
                    await watcher.poll("default")
                    results["poll"].append(
                        (await asyncio.wait_for(seen[sha], 60) - start) * 1000)
                    # git CLI on the same remote: fetch + what changed
                    start = time.perf_counter()
                    new, changed = await asyncio.to_thread(cli_fetch, root / "cli", cli_old)
                    results["cli"].append((time.perf_counter() - start) * 1000)
                    assert changed, "the CLI saw no change"
                    cli_old = new
            await sub.unsubscribe()
            await conveyor.stop()

    print(f"\nper new commit, {args.rounds} rounds, transport {args.transport}:")
    print(stats("webhook -> commit.detected", results["webhook"]))
    print(stats("poll -> commit.detected", results["poll"]))
    print(stats("git fetch + diff --name-only (CLI)", results["cli"]))


if __name__ == "__main__":
    asyncio.run(main())
