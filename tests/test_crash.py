"""The crash suite: exactly-once effects over at-least-once delivery, under SIGKILL.

Each service runs as its own process (``conveyor run``) against one nats-server process; a burst
of commits across three environments is pushed while a random service is SIGKILLed every few
seconds (and restarted), and once the nats-server itself. ``test_conveyor_up_killed_mid_burst``
does the same to the all-in-one ``conveyor up`` (embedded server). Afterwards, awaiting
conditions on the log (bounded), we check:

- every (commit, environment) pair the burst made reached a terminal event, and none failed;
- each ``deploy/<env>`` holds exactly the render of the newest commit touching it, and its
  history is in commit order (``Conveyor-Seq`` increasing);
- no notification reached the webhook twice, except where the notifier was SIGKILLed between
  the two POSTs (the unavoidable window of an HTTP effect; the CloudEvent id is stable);
- ``conveyor replay`` finds the projection in the state bucket equal to the log's fold at its
  position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters import git_tree, nats_auth
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.replay import replay
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.rendering import render
from orchestrator.targets.git.target import files_for
from tests.support.crash import (
    Chaos,
    NatsProcess,
    ServiceProcess,
    WebhookReceiver,
    conveyor_binary,
    last_log_line,
    scan_logs,
)
from tests.support.repos import Repo

pytestmark = pytest.mark.slow

ENVS = ("a", "b", "c")
TERMINAL = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_SUPERSEDED,
                      ev.APPLY_FAILED, ev.APPLY_DEAD, ev.RENDER_FAILED, ev.RENDER_DEAD})
NOTIFIED = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_SUPERSEDED,
                      ev.APPLY_FAILED, ev.RENDER_FAILED})
CONFIG = "environments:\n" + "".join(
    f"  {e}:\n    path: envs/{e}\n    target:\n      git:\n        branch: deploy/{e}\n"
    for e in ENVS) + (
    "notifiers:\n  hook:\n    type: webhook\n    url: ${HOOK_URL}\n    events:\n"
    + "".join(f"      - {t}\n" for t in sorted(NOTIFIED)))


def configmap(env: str, n: int) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {env}\n"
            f"data:\n  revision: \"{n}\"\n")


Commits = list[tuple[str, tuple[str, ...]]]  # (sha, environments it touched), oldest first


async def burst(repo: Repo, count: int, seconds: float, rng: random.Random) -> Commits:
    """``count`` commits touching one, two or three environments, spread over ``seconds``."""
    made: Commits = []
    pause = seconds / count * 4
    for i in range(1, count + 1):
        touched = tuple(sorted(rng.sample(ENVS, rng.choice((1, 1, 2, 3)))))
        sha = repo.commit({f"envs/{e}/settings.yaml": configmap(e, i) for e in touched},
                          f"change {i}: {','.join(touched)}")
        made.append((sha, touched))
        if i % 4 == 0:  # shaping the load, not synchronising: the checks await the log
            await asyncio.sleep(rng.uniform(0, pause * 2))
    return made


def initial(repo: Repo) -> Commits:
    files = {"conveyor.yaml": CONFIG, **{f"envs/{e}/settings.yaml": configmap(e, 0)
                                         for e in ENVS}}
    return [(repo.commit(files, "initial"), ENVS)]


class Quiescence:
    """An incremental predicate: every expected (sha, env) pair has a terminal event."""

    def __init__(self, expected: set[tuple[str, str]]) -> None:
        self.expected = expected
        self.terminal: set[tuple[str, str]] = set()
        self.detected: set[tuple[str, str]] = set()
        self._seen = 0
        self.last: list[Event] = []

    def __call__(self, events: list[Event]) -> bool:
        for event in events[self._seen:]:
            pair = (event.correlationid, event.subject)
            if event.type in TERMINAL:
                self.terminal.add(pair)
            elif event.type == ev.COMMIT_DETECTED:
                self.detected.add(pair)
        self._seen = len(events)
        self.last = events
        return self.expected <= self.terminal

    def describe(self) -> str:
        missing = sorted(self.expected - self.terminal)
        chains = {p: [e.type.removeprefix("conveyor.") for e in self.last
                      if (e.correlationid, e.subject) == p] for p in missing[:5]}
        return f"{len(missing)} pairs without an outcome, e.g. {chains}"


async def follow(bus: EventBus, predicate: Callable[[list[Event]], bool],
                 timeout: float) -> list[tuple[int, Event]]:
    """Follow the log until ``predicate`` holds, bounded; a failed read resumes where it was."""
    seen: list[tuple[int, Event]] = []
    events: list[Event] = []

    async def run() -> None:
        while True:
            try:
                async for stored in bus.read(start_seq=seen[-1][0] + 1 if seen else 1,
                                             stop_at_end=False):
                    seen.append((stored.seq, stored.event))
                    events.append(stored.event)
                    if predicate(events):
                        return
            except Exception as exc:  # nats.errors.TimeoutError of a busy server: read on
                print(f"follow: read interrupted ({type(exc).__name__}: {exc}); resuming")

    try:
        async with asyncio.timeout(timeout):
            await run()
    except TimeoutError:
        raise AssertionError(f"not quiescent after {timeout}s ({len(seen)} events)") from None
    return seen


async def read_all(bus: EventBus) -> list[tuple[int, Event]]:
    return [(s.seq, s.event) async for s in bus.read()]


def check_branches(repo: Repo, commits: Commits, tmp: Path) -> None:
    for env in ENVS:
        newest = next(sha for sha, touched in reversed(commits) if env in touched)
        snapshot = tmp / f"snapshot-{env}"
        git_tree.export_tree(repo.path, newest, snapshot)
        want = files_for([m.obj for m in render(snapshot, f"envs/{env}", {}).manifests])
        branch = f"deploy/{env}"
        assert sorted(repo.files(branch)) == sorted(want), env
        for path, data in want.items():
            assert repo.read(branch, path) == data.decode(), (env, path)
        log = repo.log(branch)
        assert f"Conveyor-Source-Commit: {newest}" in log[0], env
        seqs = [int(line.split(": ")[1]) for m in log for line in m.splitlines()
                if line.startswith("Conveyor-Seq: ")]
        assert len(seqs) == len(log), f"{branch}: a commit without its trailers"
        sources = [line for m in log for line in m.splitlines()
                   if line.startswith("Conveyor-Source-Commit: ")]
        assert len(sources) == len(set(sources)), f"{branch}: a commit was applied twice"
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs), \
            f"{branch} applied out of commit order: {seqs}"


async def verify(bus: EventBus, repo: Repo, commits: Commits, receiver: WebhookReceiver,
                 kills: list[tuple[float, str]], logs: list[Path], tmp: Path,
                 label: str, timeout: float = 120.0, sender: str = "notifier") -> dict[str, Any]:
    expected = {(sha, env) for sha, touched in commits for env in touched}
    quiet = Quiescence(expected)
    try:
        await follow(bus, quiet, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {quiet.describe()}") from None
    events = await read_all(bus)
    quiet([e for _, e in events])
    # every commit is an event, in every environment it touched, and nothing else was detected
    assert quiet.detected == expected
    lost = expected - quiet.terminal
    assert not lost
    failed = [(e.type, e.subject, e.data.get("reason"), e.data.get("error"))
              for _, e in events if e.type in (ev.APPLY_FAILED, ev.APPLY_DEAD,
                                               ev.RENDER_FAILED, ev.RENDER_DEAD)]
    assert not failed, failed[:5]
    # exactly one terminal outcome per pair: every outcome of one input (the runtime's dead
    # included) shares one id, so the second handling of a redelivered input is dropped
    outcomes: dict[tuple[str, str], list[str]] = {}
    for _, e in events:
        if e.type in TERMINAL:
            outcomes.setdefault((e.correlationid, e.subject), []).append(e.type)
    twice = {k: v for k, v in outcomes.items() if len(v) > 1}
    assert not twice, twice
    check_branches(repo, commits, tmp)
    notify_ids = {e.id for _, e in events if e.type in NOTIFIED and e.subject in ENVS}
    await receiver.wait_for(notify_ids, timeout=60)
    unexplained = receiver.unexplained_duplicates(kills, sender)
    assert not unexplained, f"notifications delivered twice: {unexplained}"
    assert not receiver.unflagged_repeats(), "a repeated POST without X-Conveyor-Redelivery"
    assert not receiver.unrecognisable(), "one fact notified under two ids"
    # the live projection equals the log's fold at the projection's own position (events,
    # notify.sent for one, may still arrive: a fold of "the log now" would be a moving target)
    report = await replay(bus)
    assert report.equal, [d.describe() for d in report.differences]
    scanned = scan_logs(logs)
    counts = {
        "commits": len(commits), "pairs": len(expected), "events": len(events),
        "kills": dict(sorted(Chaos_counts(kills).items())),
        "redeliveries": scanned.redeliveries, "duplicates_suppressed": scanned.duplicates_dropped,
        "webhook_posts": sum(len(t) for t in receiver.posts.values()),
        "webhook_duplicates_in_kill_window": sum(n - 1 for n in receiver.duplicates().values()),
        "superseded": sum(e.type == ev.APPLY_SUPERSEDED for _, e in events),
        "applied": sum(e.type == ev.APPLY_SUCCEEDED for _, e in events),
        "late_second_outcomes": len(twice),
        "lost": len(lost),
    }
    print(f"\ncrash-suite[{label}]: {json.dumps(counts)}")
    return counts


def Chaos_counts(kills: list[tuple[float, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, name in kills:
        out[name] = out.get(name, 0) + 1
    return out


def hook_env(url: str) -> dict[str, str]:
    """The webhook's URL, and the operator's leave for conveyor.yaml to name it (``${VAR}``
    expands only names the operator allows)."""
    return {"HOOK_URL": url, "CONVEYOR_ENV_ALLOW": "HOOK_URL"}


def up_bus_url(data_dir: Path, url: str) -> str:
    """``conveyor up``'s embedded server with the credentials it generated (0600 in its data
    dir): the log shows the URL without them."""
    creds = nats_auth.load_or_create(data_dir / "nats")
    return nats_auth.with_credentials(url, creds.user, creds.password)


async def first_sight(url: str, commits: Commits) -> None:
    """The first poll of a new source announces its head only: let it see the initial commit."""
    bus = await EventBus.connect(url, name="crash-suite-setup")
    try:
        await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 30)
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def test_microservices_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    nats = NatsProcess(tmp_path / "nats")
    await nats.start()
    services: dict[str, ServiceProcess] = {}
    async with webhook() as receiver:
        try:
            for name in ("api", "notifier", "applier", "renderer", "git-watcher"):
                port = free_port()
                services[name] = ServiceProcess(name, [
                    conveyor_binary(), "run", name, "--nats", nats.url, "--repo", str(repo.path),
                    "--data-dir", str(tmp_path / "data" / name),
                    "--listen", f"127.0.0.1:{port}", "--interval", "0.3",
                ], tmp_path / f"{name}.log", env=hook_env(receiver.url))
                await services[name].start()
            await first_sight(nats.url, commits)
            chaos = Chaos(services, nats, period=(1.0, 2.0), seed=rng.random())
            chaos_task = asyncio.create_task(chaos.run(nats_restart_after=4))
            commits += await burst(repo, 210, seconds=14.0, rng=rng)
            while len(chaos.kills) < 10:  # keep killing while the backlog drains
                await asyncio.sleep(0.5)
            chaos.stop()
            await chaos_task
            bus = await EventBus.connect(nats.url, name="crash-suite")
            try:
                counts = await verify(bus, repo, commits, receiver, chaos.kills,
                                      [s.log_path for s in services.values()], tmp_path,
                                      "microservices")
            finally:
                await bus.close()
            assert counts["lost"] == 0
            assert chaos.counts()["nats-server"] == 1
            assert sum(chaos.counts().values()) >= 10
        finally:
            for service in services.values():
                with contextlib.suppress(Exception):
                    await service.terminate(timeout=15)
            await nats.stop()


async def test_conveyor_up_killed_mid_burst(tmp_path: Path) -> None:
    rng = random.Random(7)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    async with webhook() as receiver:
        up = ServiceProcess("up", [
            conveyor_binary(), "up", "--repo", str(repo.path), "--data-dir",
            str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}",
            "--interval", "0.3",
        ], tmp_path / "up.log", env=hook_env(receiver.url), ready_count=5)
        await up.start()
        ready = last_log_line(up.log_path, "embedded_nats.ready")
        assert ready is not None
        await first_sight(up_bus_url(tmp_path / "data", str(ready["url"])), commits)
        chaos = Chaos({"up": up}, None, period=(2.0, 3.5), seed=rng.random())
        chaos_task = asyncio.create_task(chaos.run(nats_restart_after=None))
        try:
            commits += await burst(repo, 200, seconds=10.0, rng=rng)
            while len(chaos.kills) < 3:
                await asyncio.sleep(0.5)
            chaos.stop()
            await chaos_task
            ready = last_log_line(up.log_path, "embedded_nats.ready")
            assert ready is not None
            bus = await EventBus.connect(up_bus_url(tmp_path / "data", str(ready["url"])),
                                         name="crash-suite")
            try:
                await verify(bus, repo, commits, receiver,
                             chaos.kills, [up.log_path], tmp_path, "conveyor-up",
                             sender="up")  # the notifier runs inside ``up``
            finally:
                await bus.close()
            # the embedded server a SIGKILL left behind was recovered, never reported as an error
            text = up.log_path.read_text()
            assert "EmbeddedNatsFailed" not in text
        finally:
            chaos.stop()
            with contextlib.suppress(Exception):
                assert await up.terminate(timeout=30) == 0
