"""`conveyor demo`: a GitOps repository made on the spot, deployed before your eyes.

It writes a repository with a Kustomize base and two overlays (dev, prod), starts everything in
this process on an embedded nats-server, waits for the first deployment, makes a commit (bumping
the dev replicas and the shared image tag), shows the commit flowing through both environments
with each stage's latency, then keeps running until Ctrl-C so you can poke at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from conveyor.app import Conveyor
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.demo_repo import Repo
from orchestrator.domain import events as ev
from orchestrator.domain.trace import TraceNode, build_trace, latency_ms, summary
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher

T = TypeVar("T")

CONFIG = """\
# Conveyor configuration: every environment is a directory rendered to a target.
environments:
  dev:
    path: envs/dev
    target:
      git:
        branch: deploy/dev      # rendered manifests are committed here
  prod:
    path: envs/prod
    target:
      git:
        branch: deploy/prod
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:{tag}
          ports:
            - containerPort: 80
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 80
"""


def overlay(env: str, replicas: int) -> str:
    return f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {env}
resources:
  - ../../base
  - namespace.yaml
labels:
  - pairs: {{environment: {env}}}
patches:
  - target: {{kind: Deployment, name: web}}
    patch: |-
      - op: replace
        path: /spec/replicas
        value: {replicas}
"""


def demo_files(tag: str = "1.27", dev_replicas: int = 1) -> dict[str, str]:
    files = {
        "conveyor.yaml": CONFIG,
        "README.md": "# Demo GitOps repository\n\nEvery change here is a commit.\n",
        "base/kustomization.yaml": "resources:\n  - deployment.yaml\n  - service.yaml\n",
        "base/deployment.yaml": DEPLOYMENT.replace("{tag}", tag),
        "base/service.yaml": SERVICE,
        "envs/dev/kustomization.yaml": overlay("dev", dev_replicas),
        "envs/dev/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dev\n",
        "envs/prod/kustomization.yaml": overlay("prod", 3),
        "envs/prod/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n",
    }
    return files


def _cli() -> str:
    """How to run `conveyor` from here: plain when on PATH, else the venv's path."""
    here = Path(sys.executable).parent / "conveyor"
    found = shutil.which("conveyor")
    if found and Path(found).resolve() == here.resolve():
        return "conveyor"
    return str(here) if here.exists() else "conveyor"


CLI = _cli()


def _port_free(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def say(text: str = "") -> None:
    print(text, flush=True)


async def wait_for(bus: EventBus, sha: str, envs: set[str],
                   timeout: float = 60) -> list[ev.Event]:
    """Events of one commit until every environment reached a terminal apply outcome."""
    done_types = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}
    seen: list[ev.Event] = []
    finished: set[str] = set()

    async def follow() -> None:
        async for stored in bus.read(start_seq=1, stop_at_end=False):
            e = stored.event
            if e.correlationid != sha:
                continue
            seen.append(e)
            if e.type in done_types:
                finished.add(e.subject)
                if finished >= envs:
                    return

    await asyncio.wait_for(follow(), timeout)
    return seen


def show(events: list[ev.Event]) -> None:
    def walk(node: TraceNode, depth: int) -> None:
        e = node.event
        lat = f"+{node.latency_ms:.0f} ms" if node.latency_ms is not None else ""
        detail = summary(e)  # the payload's own one-line description
        say(f"    {'  ' * depth}{e.type.removeprefix('conveyor.'):<20} {e.subject:<6} "
            f"{lat:>9}  {detail}")
        for child in node.children:
            walk(child, depth + 1)

    for root in build_trace(events):
        walk(root, 0)
    by_env: dict[str, list[ev.Event]] = {}
    for e in events:
        if e.subject != ev.NO_ENV:  # config.loaded and the like: no environment's latency
            by_env.setdefault(e.subject, []).append(e)
    for env, evs in sorted(by_env.items()):
        ms = latency_ms(evs[0], evs[-1])
        say(f"    {env}: commit -> {evs[-1].type.removeprefix('conveyor.')} in {ms:.0f} ms")


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None as soon as ``stop`` is set (Ctrl-C during the walkthrough)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if not task.cancelled() else None


async def run_demo(data_dir: Path, listen: str) -> int:
    repo_dir = data_dir / "repo"
    fresh = not (repo_dir / ".git").exists()
    repo = Repo(repo_dir)
    if fresh:
        repo.commit(demo_files(), "Initial environments: base + dev and prod overlays")
    if not _port_free(listen):
        listen = "127.0.0.1:0"
    settings = Settings(nats_url="", data_dir=data_dir / "state", repo=str(repo_dir),
                        branch="main", listen=listen, interval=2.0)
    conveyor = Conveyor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say(f"Demo repository: {repo_dir}")
    try:
        await conveyor.start()
        assert conveyor.bus is not None
        api = conveyor.service("api")
        watcher = conveyor.service("git-watcher")
        assert isinstance(api, ApiService) and isinstance(watcher, GitWatcher)
        say(f"Conveyor is up: api {api.url}  (try: {CLI} status --api {api.url})")
        head = repo.head()
        assert head is not None
        if fresh:
            say(f"\n1. First sync of commit {head[:7]} to dev and prod:")
            first = await _unless_stopped(wait_for(conveyor.bus, head, {"dev", "prod"}), stop)
            if first is None:
                return 0
            show(first)
        else:  # the head may have touched one environment only, or none: nothing to wait for
            say(f"\n1. Resuming the demo repository at {head[:7]} (its event log is kept in "
                f"{settings.data_dir})")

        tag = "1.27.1" if fresh else f"1.27.{len(repo.log('main'))}"
        sha = repo.commit(demo_files(tag=tag, dev_replicas=2),
                          f"Roll out nginx {tag}; dev gets 2 replicas")
        say(f"\n2. A developer merges commit {sha[:7]} (\"Roll out nginx {tag}\"):")
        watcher.trigger()  # what a post-receive hook or webhook does; the poll would find it too
        second = await _unless_stopped(wait_for(conveyor.bus, sha, {"dev", "prod"}), stop)
        if second is None:
            return 0
        show(second)
        say("\n3. The target branches now hold the rendered manifests:")
        for env in ("dev", "prod"):
            say(f"    deploy/{env}: {', '.join(repo.files(f'deploy/{env}'))}")
            say(f"      last commit: {repo.log(f'deploy/{env}')[0].splitlines()[0]}")
        say("\nConveyor keeps watching. Commit to the demo repository and see it flow:")
        say(f"    cd {repo_dir} && $EDITOR envs/dev/kustomization.yaml && git commit -am change")
        say(f"    {CLI} log --follow --api {api.url}")
        say(f"    {CLI} status --api {api.url}    {CLI} trace SHA --api {api.url}")
        say(f"Dashboard: {api.url}/")
        say("Press Ctrl-C to stop.")
        if not sys.stdin.isatty() and "CONVEYOR_DEMO_EXIT" in os.environ:
            return 0
        await stop.wait()
    except TimeoutError:
        say("The demo did not complete in time; see the log above.")
        return 1
    finally:
        with contextlib.suppress(Exception):
            await conveyor.stop()
    return 0
