"""Failover: a three-server JetStream cluster loses the stream's leader in a commit burst.

Each service runs as its own ``conveyor run`` process against the cluster (``--nats`` with all
three servers, ``--replicas 3``). While a burst of commits across three environments is pushed,
the server leading the ``CONVEYOR`` stream is SIGKILLed. Afterwards every (commit, environment)
pair has exactly one outcome, none failed, each deploy branch holds the newest commit's render
with its history in commit order and no commit applied twice (``test_crash.check_branches``).

How long the pipeline pauses is measured, not asserted here (a loaded CI machine would make it a
flaky test): ``python -m benchmarks.failover`` reports kill -> converged over several kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
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
        ], tmp / f"{name}.log", env={"HOOK_URL": "http://127.0.0.1:9/unused"})
        await started[name].start()
    return started


async def test_the_stream_leader_is_killed_mid_burst(tmp_path: Path) -> None:
    rng = random.Random(1311)
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    cluster = NatsCluster(tmp_path / "cluster")
    await cluster.start()
    services: dict[str, ServiceProcess] = {}
    try:
        services = await start_services(cluster, repo, tmp_path)
        bus = await EventBus.connect(cluster.urls, name="failover-test", retry_for=30)
        try:
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
        finally:
            await bus.close()
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate(timeout=15)
        await cluster.stop()
