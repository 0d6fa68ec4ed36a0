"""Commit -> apply.succeeded latency for a plain-YAML environment, against the raw JetStream hop.

Run: .venv/bin/python benchmarks/latency.py [--commits 60]

Both figures come from the same run on the same nats-server:
- baseline: nats-py ``js.publish`` -> durable pull consumer receive, one message at a time;
- conveyor: a commit is made, the watcher is triggered (what a webhook or `conveyor refresh`
  does), and the clock stops when ``conveyor.apply.succeeded`` for that commit is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
from nats.js import api as jsapi

from conveyor.app import Conveyor
from orchestrator import logging as clog
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.domain.events import Event
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo

CONFIG = "environments:\n  app:\n    path: app\n"


def manifest(i: int) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: app\n"
            f"data:\n  version: \"{i}\"\n")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def baseline(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BASELINE", subjects=["baseline.>"])
    sub = await js.pull_subscribe("baseline.x", durable="b",
                                  config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.EXPLICIT))
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await js.publish("baseline.x", b"x" * 256, headers={"Nats-Msg-Id": f"m{i}"})
        msgs = await sub.fetch(1, timeout=5)
        out.append((time.perf_counter() - t0) * 1000)
        await msgs[0].ack()
    await nc.close()
    return out


async def main(commits: int) -> None:
    clog.configure("warning", json_logs=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = EmbeddedNats(root / "nats")
        url = await server.start()
        try:
            base = await baseline(url, 500)
            repo = Repo(root / "repo")
            repo.commit({"conveyor.yaml": CONFIG, "app/cm.yaml": manifest(0)}, "initial")
            settings = Settings(nats_url=url, data_dir=root / "data", repo=str(repo.path),
                                branch="main", listen="127.0.0.1:0", interval=3600.0)
            conveyor = Conveyor(settings)
            await conveyor.start()
            watcher = conveyor.service("git-watcher")
            assert isinstance(watcher, GitWatcher) and conveyor.bus is not None
            nc = conveyor.bus.nc
            done: dict[str, asyncio.Future[float]] = {}

            async def on_applied(msg: nats.aio.msg.Msg) -> None:
                event = Event.from_json(msg.data)
                fut = done.get(event.correlationid)
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())

            await nc.subscribe("conveyor.events.app.apply.succeeded", cb=on_applied)
            latencies = []
            for i in range(1, commits + 1):
                sha = repo.commit({"app/cm.yaml": manifest(i)}, f"change {i}")
                fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                done[sha] = fut
                t0 = time.perf_counter()
                await watcher.poll()
                t1 = await asyncio.wait_for(fut, 30)
                latencies.append((t1 - t0) * 1000)
            await conveyor.stop()
        finally:
            await server.stop()
    print(f"raw JetStream publish->consume round trip (n=500): "
          f"p50 {pct(base, 50):.2f} ms, p99 {pct(base, 99):.2f} ms")
    print(f"commit -> apply.succeeded (n={commits}, plain YAML, git target): "
          f"p50 {pct(latencies, 50):.1f} ms, p99 {pct(latencies, 99):.1f} ms, "
          f"mean {statistics.mean(latencies):.1f} ms, max {max(latencies):.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=60)
    asyncio.run(main(parser.parse_args().commits))
