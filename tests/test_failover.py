"""Failover: a three-server JetStream cluster loses the stream's leader in a commit burst.

Each service runs as its own ``conveyor run`` process against the cluster (``--nats`` with all
three servers, ``--replicas 3``). While a burst of commits across three environments is pushed,
the server leading the ``CONVEYOR`` stream is SIGKILLed. Afterwards every (commit, environment)
pair has exactly one outcome, none failed, each deploy branch holds the newest commit's render
with its history in commit order and no commit applied twice (``test_crash.check_branches``).

Also on the cluster: a server whose store is wiped resyncs before the leader may go, and each
service process is SIGKILLed in turn mid-burst; ``conveyor replay`` exits 0 after each.

How long the pipeline pauses is measured, not asserted here (a loaded CI machine would make it a
flaky test): ``python -m benchmarks.failover`` reports kill -> converged over several kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.adapters.nats_schema import kv_stream, obj_stream
from orchestrator.domain import events as ev
from tests.support.cluster import NatsCluster
from tests.support.crash import ServiceProcess, conveyor_binary
from tests.support.repos import Repo
from tests.test_crash import ENVS, TERMINAL, Quiescence, burst, check_branches, follow, initial

pytestmark = pytest.mark.slow

SERVICES = ("api", "applier", "renderer", "git-watcher")


async def start_services(cluster: NatsCluster, repo: Repo, tmp: Path) -> dict[str, ServiceProcess]:
    started: dict[str, ServiceProcess] = {}
    for name in SERVICES:
        started[name] = ServiceProcess(name, [
            conveyor_binary(), "run", name, "--nats", cluster.urls, "--replicas", "3",
            "--repo", str(repo.path), "--data-dir", str(tmp / "data" / name),
            "--listen", f"127.0.0.1:{free_port()}", "--interval", "0.3",
        ], tmp / f"{name}.log", env={"HOOK_URL": "http://127.0.0.1:9/unused",
                                     "CONVEYOR_ENV_ALLOW": "HOOK_URL"})
        await started[name].start()
    return started


@dataclass
class OnCluster:
    cluster: NatsCluster
    services: dict[str, ServiceProcess]
    bus: EventBus


@contextlib.asynccontextmanager
async def on_cluster(repo: Repo, tmp: Path) -> AsyncIterator[OnCluster]:
    """Three servers and the services as processes on them; afterwards ``conveyor replay``
    must find the projections equal to the log, and everything is stopped whatever happened."""
    cluster = NatsCluster(tmp / "cluster")
    await cluster.start()
    services: dict[str, ServiceProcess] = {}
    try:
        services = await start_services(cluster, repo, tmp)
        bus = await EventBus.connect(cluster.urls, name="failover-test", retry_for=30)
        try:
            yield OnCluster(cluster, services, bus)
        finally:
            await bus.close()
        assert await replay(cluster) == 0
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate(timeout=15)
        await cluster.stop()


async def test_the_stream_leader_is_killed_mid_burst(tmp_path: Path) -> None:
    rng = random.Random(1311)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    async with on_cluster(repo, tmp_path) as run:
        cluster, bus = run.cluster, run.bus
        for name in (subjects.STREAM, kv_stream(subjects.STATE_BUCKET),
                     kv_stream(subjects.DELIVERY_BUCKET), obj_stream(subjects.BUNDLE_BUCKET)):
            assert (await bus.js.stream_info(name)).config.num_replicas == 3, name
        await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 60)

        pushing = asyncio.create_task(burst(repo, 60, seconds=6.0, rng=rng))
        await asyncio.sleep(2.0)  # mid-burst (shaping the scenario, not synchronising)
        leader = await cluster.stream_leader(subjects.STREAM)
        await cluster.kill(leader)
        killed_at = time.monotonic()
        commits += await pushing

        expected = {(sha, env) for sha, touched in commits for env in touched}
        quiet = Quiescence(expected)
        seen = await follow(bus, quiet, 120)
        converged = time.monotonic() - killed_at
        print(f"\nfailover: killed {leader.name} (stream leader); all {len(expected)} "
              f"pairs had an outcome {converged:.1f}s after the kill")
        events = [e for _, e in seen]
        assert quiet.detected == expected
        failed = [(e.type, e.subject, e.data.get("error")) for e in events
                  if e.type in (ev.APPLY_FAILED, ev.APPLY_DEAD, ev.RENDER_FAILED,
                                ev.RENDER_DEAD)]
        assert not failed, failed[:5]
        outcomes: dict[tuple[str, str], list[str]] = {}
        for e in events:
            if e.type in TERMINAL:
                outcomes.setdefault((e.correlationid, e.subject), []).append(e.type)
        twice = {k: v for k, v in outcomes.items() if len(v) > 1}
        assert not twice, twice
        check_branches(repo, commits, tmp_path)  # newest last, none twice, in order
        assert await cluster.stream_leader(subjects.STREAM) != leader


async def replay(cluster: NatsCluster) -> int:
    """``conveyor replay --nats`` against the cluster: 0 when the projection equals the log."""
    proc = await asyncio.create_subprocess_exec(
        conveyor_binary(), "replay", "--nats", cluster.urls,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    print(out.decode(errors="replace")[-2000:])
    return int(proc.returncode or 0)


async def stream_messages(cluster: NatsCluster, node_name: str) -> int:
    """How many messages ``node_name``'s replica of the stream holds (its own /jsz)."""
    import aiohttp

    node = cluster.node(node_name)
    url = f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = await resp.json()
    for account in body.get("account_details") or []:
        for info in account.get("stream_detail") or []:
            if info.get("name") == subjects.STREAM:
                return int(info["state"]["messages"])
    return 0


async def test_a_wiped_server_resyncs_and_then_the_leader_can_go(tmp_path: Path) -> None:
    """One server loses its disk and comes back empty: it copies the stream from the others,
    and afterwards the cluster survives the loss of the leader with nothing lost."""
    rng = random.Random(77)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    async with on_cluster(repo, tmp_path) as run:
        cluster, bus = run.cluster, run.bus
        # the first poll of a new source announces its head only: let it see that first
        await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 60)
        commits += await burst(repo, 20, seconds=2.0, rng=rng)
        await follow(bus, Quiescence({(s, e) for s, t in commits for e in t}), 120)
        leader = await cluster.stream_leader(subjects.STREAM)
        follower = next(n for n in cluster.nodes if n is not leader)
        await cluster.wipe(follower)
        await cluster.start_node(follower)  # /healthz waits until its streams are current
        total = await bus.last_seq()
        assert await stream_messages(cluster, follower.name) >= total
        await cluster.kill(leader)
        commits += await burst(repo, 20, seconds=2.0, rng=rng)
        quiet = Quiescence({(s, e) for s, t in commits for e in t})
        seen = await follow(bus, quiet, 120)
        assert quiet.detected == quiet.expected
        assert [s for s, _ in seen] == list(range(1, len(seen) + 1))  # no gap: nothing lost
        check_branches(repo, commits, tmp_path)


async def test_each_service_is_killed_in_turn_on_the_cluster(tmp_path: Path) -> None:
    """SIGKILL of every service process in turn during a burst (R3): nothing lost or doubled."""
    rng = random.Random(2024)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    async with on_cluster(repo, tmp_path) as run:
        services, bus = run.services, run.bus
        await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 60)
        pushing = asyncio.create_task(burst(repo, 40, seconds=8.0, rng=rng))
        for name in SERVICES:
            await services[name].kill()
            await services[name].start()
        commits += await pushing
        quiet = Quiescence({(s, e) for s, t in commits for e in t})
        seen = await follow(bus, quiet, 180)
        assert quiet.detected == quiet.expected
        outcomes: dict[tuple[str, str], list[str]] = {}
        for _, e in seen:
            if e.type in TERMINAL:
                outcomes.setdefault((e.correlationid, e.subject), []).append(e.type)
        assert not {k: v for k, v in outcomes.items() if len(v) > 1}
        assert all(services[n].kills == 1 for n in SERVICES)
        check_branches(repo, commits, tmp_path)
