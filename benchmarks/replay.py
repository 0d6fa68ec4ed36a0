"""Full replay of a 100,000-event log, against a raw nats-py ordered consumer on the same stream.

Run: .venv/bin/python benchmarks/replay.py [--events 100000] [--envs 20]

One nats-server, one run:
1. synthesise a realistic log with ``new_event`` (commits detected across ~20 environments;
   renders, applies, retries, failures, supersedes, health verdicts, notifications; config
   events about no environment) and publish it pipelined with ``js.publish_async``;
2. store the projection a caught-up projector would hold (so replay compares equal);
3. baseline: a raw nats-py ordered push consumer reads the whole stream (bytes only, then
   again with ``json.loads`` of every payload: Python's parsing floor);
4. ``conveyor replay``'s code path (``orchestrator.commands.replay.replay``): consistent snapshot,
   read + decode every event, fold in memory, compare with the live records.

The figure is events per second of the full replay and its ratio to the raw read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js import api as jsapi

from orchestrator import logging as clog
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.replay import rebuild, replay
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.state import project
from orchestrator.projector import encode, records

AUTHORS = ["Ada Lovelace <ada@example.com>", "Grace Hopper <grace@example.com>",
           "Linus T <linus@example.com>", "Dev Eloper <dev@example.com>"]


def synthesise(n: int, n_envs: int, seed: int = 1) -> list[Event]:
    """About ``n`` events: commits touching a few environments each, through every stage."""
    rng = random.Random(seed)
    envs = [f"env-{i:02d}" for i in range(n_envs)]
    out: list[Event] = []
    c = 0
    while len(out) < n:
        c += 1
        sha = f"{rng.getrandbits(160):040x}"
        commit = {"revision": sha, "short": sha[:7], "message": f"change {c}: bump image tag",
                  "author": rng.choice(AUTHORS), "committed_at": "2025-01-01T10:00:00Z",
                  "branch": "main", "source": "default", "repo": "/srv/git/platform"}
        if c % 50 == 1:
            out.append(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation=sha,
                                 key="default", data={**commit, "environments": envs}))
        for env in rng.sample(envs, rng.randint(1, 4)):
            payload = {"name": env, "path": f"envs/{env}", "source": "default",
                       "target": {"git": {"branch": f"deploy/{env}"}}, "render": {}, "sync": {},
                       "retry": {"limit": 5, "base": 2.0, "factor": 2.0, "max": 300.0}}
            detected = new_event(ev.COMMIT_DETECTED, env=env, correlation=sha, key="default",
                                 data={**commit, "env": payload,
                                       "changed": [f"envs/{env}/deployment.yaml"]})
            out.append(detected)
            common = {**commit, "env": payload, "origin_seq": len(out)}
            if rng.random() < 0.05:
                out.append(new_event(ev.RENDER_FAILED, env=env, cause=detected, data={
                    **common, "error": f"envs/{env}/deployment.yaml:12: mapping values are "
                                       "not allowed here", "reason": "ManifestError",
                    "duration_ms": 41.0}))
                continue
            digest = f"sha256:{rng.getrandbits(256):064x}"
            rendered = new_event(ev.RENDER_SUCCEEDED, env=env, cause=detected, data={
                **common, "digest": digest, "objects": rng.randint(3, 40),
                "renderer": "kustomize", "tool_version": "5.4.3", "duration_ms": 87.5})
            out.append(rendered)
            roll = rng.random()
            if roll < 0.05:
                out.append(new_event(ev.APPLY_SUPERSEDED, env=env, cause=rendered,
                                     data={**commit, "superseded_by": sha}))
                continue
            for attempt in range(1, 3 if roll < 0.12 else 1):
                out.append(new_event(ev.APPLY_RETRYING, env=env, cause=rendered,
                                     key=str(attempt), data={**commit, "attempt": attempt,
                                                             "error": "503 from apiserver",
                                                             "delay": 2.0}))
            kind = ev.APPLY_FAILED if roll > 0.97 else ev.APPLY_SUCCEEDED
            applied = new_event(kind, env=env, cause=rendered, data={
                **commit, "digest": digest, "duration_ms": 640.2, "target": f"git deploy/{env}",
                "summary": f"committed {sha[:12]} to deploy/{env}",
                **({"error": "forbidden: namespaces"} if kind == ev.APPLY_FAILED else {})})
            out.append(applied)
            if kind == ev.APPLY_SUCCEEDED and rng.random() < 0.5:
                status = "Degraded" if rng.random() < 0.05 else "Healthy"
                out.append(new_event(f"conveyor.health.{status.lower()}", env=env,
                                     cause=applied, data={"status": status,
                                                          "message": "3/3 ready"}))
            out.append(new_event(ev.NOTIFY_SENT, env=env, cause=applied, key="ops",
                                 data={"route": "ops", "provider": "slack", "for": kind,
                                       "answer": "ok", "duration_ms": 120.0}))
    return out[:n]


async def publish(bus: EventBus, events: list[Event]) -> float:
    t0 = time.perf_counter()
    js = bus.js
    for i in range(0, len(events), 5000):
        futures = [await js.publish_async(subjects.event_subject(e.subject, e.type), e.to_json(),
                                          headers={"Nats-Msg-Id": e.id})
                   for e in events[i:i + 5000]]
        await asyncio.gather(*futures)
    return time.perf_counter() - t0


async def seed_live(bus: EventBus, events: list[Event]) -> float:
    """What a caught-up projector holds: the projection's records in the state bucket."""
    t0 = time.perf_counter()
    stored = records(project(enumerate(events, 1)))
    acks = [await bus.js.publish_async(f"$KV.{subjects.STATE_BUCKET}.{k}", encode(v))
            for k, v in stored.items()]
    await asyncio.gather(*acks)
    return time.perf_counter() - t0


async def raw_read(bus: EventBus, expected: int, parse: bool) -> float:
    """A raw nats-py ordered push consumer over the whole stream."""
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: Any) -> None:
        nonlocal seen
        if parse:
            json.loads(msg.data)
        seen += 1
        if seen >= expected:
            done.set()

    t0 = time.perf_counter()
    sub = await bus.js.subscribe(subjects.ALL_EVENTS, stream=subjects.STREAM, cb=on_msg,
                                 ordered_consumer=True, deliver_policy=jsapi.DeliverPolicy.ALL,
                                 pending_msgs_limit=-1)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed


async def main(n: int, n_envs: int) -> None:
    clog.configure("warning", False)
    events = synthesise(n, n_envs)
    size = sum(len(e.to_json()) for e in events)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        url = await server.start()
        bus = await EventBus.connect(url, name="bench-replay")
        try:
            pub = await publish(bus, events)
            assert await bus.last_seq() == n
            seed = await seed_live(bus, events)
            raw = await raw_read(bus, n, parse=False)
            raw_json = await raw_read(bus, n, parse=True)
            t0 = time.perf_counter()
            _, folded = await rebuild(bus, n)
            read_fold = time.perf_counter() - t0
            report = await replay(bus)
        finally:
            await bus.close()
            await server.stop()
    assert report.equal, report.differences[:5]
    assert report.events == n == folded
    print(f"log: {n} events, {n_envs} environments, {size / n:.0f} B/event average, "
          f"{report.keys} projection keys")
    print(f"publish (publish_async, pipelined):   {n / pub:>9,.0f} events/s")
    print(f"(seed the live projection:             {seed:.2f}s, not part of the replay)")
    print(f"raw ordered consumer, bytes only:     {n / raw:>9,.0f} events/s  ({raw:.2f}s)")
    print(f"raw ordered consumer + json.loads:    {n / raw_json:>9,.0f} events/s  "
          f"({raw_json:.2f}s)")
    print(f"replay read + decode + fold only:     {n / read_fold:>9,.0f} events/s  "
          f"({read_fold:.2f}s)")
    print(f"conveyor replay (full, compared):     {n / report.seconds:>9,.0f} events/s  "
          f"({report.seconds:.2f}s), equal={report.equal}")
    print(f"ratio replay / raw read:              {raw / report.seconds:>9.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--envs", type=int, default=20)
    a = p.parse_args()
    asyncio.run(main(a.events, a.envs))
