"""Failover and durability costs on a three-server JetStream cluster on loopback, in one run.

Run from the tree root: ``python -m benchmarks.failover [--kills 5] [--events 2000]``

1. Publish throughput of Conveyor's own path (``EventBus.publish``: one awaited publish with a
   ``Nats-Msg-Id`` at a time, 600-byte events) for R1 and R3 streams, under each sync policy
   (``always``: fsync before every ack; ``interval``: JetStream's default 2 min).
2. Kill -> converged: the services run as ``conveyor run`` processes against the cluster with
   ``--replicas 3`` (sync always, as k8s/base); per round a burst of commits is pushed, the
   ``CONVEYOR`` stream's leader is SIGKILLed at once, and the clock stops when every
   (commit, environment) pair of the burst has its outcome: at the server's own timestamp of
   the last of those outcomes (when the stream stored it), beside the moment this observer
   read it (its reader is caught by the kill too). Also printed: when the stream took a write
   again (a probe publishing every 50 ms), i.e. the servers' election, which Conveyor cannot
   shorten. The killed server is restarted (and caught up) before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator import logging as clog
from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain.events import new_event
from tests.support.cluster import NatsCluster
from tests.support.crash import ServiceProcess
from tests.support.repos import Repo
from tests.test_crash import ENVS, TERMINAL, Quiescence, burst, follow, initial
from tests.test_failover import start_services


async def throughput(root: Path, sync: str, replicas: int, events: int) -> float:
    cluster = NatsCluster(root / f"tp-{sync}-r{replicas}", sync=sync)
    await cluster.start()
    try:
        bus = await EventBus.connect(cluster.urls, name="bench", replicas=replicas,
                                     retry_for=30)
        try:
            payload = {"pad": "x" * 400}
            started = time.perf_counter()
            for i in range(events):
                await bus.publish(new_event("conveyor.commit.detected", env="bench",
                                            data=payload, key=str(i)))
            return events / (time.perf_counter() - started)
        finally:
            await bus.close()
    finally:
        await cluster.stop()


async def writable_after(bus: EventBus, since: float, stop: asyncio.Event) -> float | None:
    """Seconds from ``since`` (wall clock) to the first publish the stream took after it."""
    n = 0
    while not stop.is_set():
        n += 1
        with contextlib.suppress(Exception):
            await bus.data.publish(
                "conveyor.events._.probe.beat",
                new_event("conveyor.probe.beat", env="_", key=f"{since}:{n}", data={}).to_json(),
                stream=subjects.STREAM)
            if time.time() > since:
                return time.time() - since
        await asyncio.sleep(0.05)
    return None


async def kill_rounds(root: Path, kills: int) -> list[float]:
    rng = random.Random(5)
    repo = Repo(root / "repo")
    commits = initial(repo)
    cluster = NatsCluster(root / "failover", sync="always")
    await cluster.start()
    services: dict[str, ServiceProcess] = {}
    figures: list[float] = []
    try:
        services = await start_services(cluster, repo, root)
        bus = await EventBus.connect(cluster.urls, name="bench-failover", retry_for=30)
        try:
            await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 60)
            for n in range(kills):
                made = await burst(repo, 8, seconds=0.0, rng=rng)
                leader = await cluster.stream_leader(subjects.STREAM)
                probe = await EventBus.connect(",".join(
                    node.url for node in cluster.nodes if node is not leader),
                    name="bench-probe", retry_for=30)
                await cluster.kill(leader)
                killed, killed_wall = time.monotonic(), time.time()
                stop = asyncio.Event()
                writable = asyncio.create_task(writable_after(probe, killed_wall, stop))
                pairs = {(sha, e) for sha, touched in made for e in touched}
                seen = await follow(bus, Quiescence(pairs), 180)
                observed = time.monotonic() - killed
                stop.set()
                elected = await writable
                await probe.close()
                first: dict[tuple[str, str], int] = {}
                for seq, e in seen:
                    pair = (e.correlationid, e.subject)
                    if e.type in TERMINAL and pair in pairs:
                        first.setdefault(pair, seq)
                raw = await bus.js.get_msg(subjects.STREAM, seq=max(first.values()))
                assert raw.time is not None
                figures.append(raw.time.timestamp() - killed_wall)
                print(f"  kill {n + 1}: {leader.name} (stream leader) -> converged in "
                      f"{figures[-1]:.1f}s (stream writable again after "
                      f"{elected if elected is None else round(elected, 1)}s; "
                      f"observer read it at {observed:.1f}s)")
                await cluster.start_node(leader)
                await cluster.wait_healthy()
        finally:
            await bus.close()
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate(timeout=15)
        await cluster.stop()
    return figures


async def main(kills: int, events: int) -> None:
    clog.configure("warning", json_logs=False)
    with tempfile.TemporaryDirectory(prefix="conveyor-failover-") as tmp:
        root = Path(tmp)
        print(f"publish throughput, EventBus.publish one at a time, {events} events "
              "(3-server cluster on loopback):")
        rates: dict[tuple[str, int], float] = {}
        for sync in ("interval", "always"):
            for replicas in (1, 3):
                rates[sync, replicas] = await throughput(root, sync, replicas, events)
                print(f"  sync {sync:8s} R{replicas}: {rates[sync, replicas]:7.0f} events/s")
        if kills:
            print(f"kill -> converged, R3, sync always, {kills} kills of the stream leader:")
            figures = await kill_rounds(root, kills)
            print(f"  p50 {statistics.median(figures):.1f}s  max {max(figures):.1f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.kills, args.events))
