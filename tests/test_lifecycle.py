"""Graceful lifecycle: SIGTERM stops pulling, finishes or naks what it holds, exits 0."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from tests.support.crash import NatsProcess, ServiceProcess, conveyor_binary
from tests.support.repos import Repo
from tests.test_crash import (
    ENVS,
    Quiescence,
    burst,
    check_branches,
    first_sight,
    follow,
    initial,
)

pytestmark = pytest.mark.slow


async def test_sigterm_applier_holding_work_exits_0_and_nothing_is_half_applied(
        tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    commits = initial(repo)
    nats = NatsProcess(tmp_path / "nats")
    await nats.start()
    procs: dict[str, ServiceProcess] = {}

    def service(name: str) -> ServiceProcess:
        return ServiceProcess(name, [
            conveyor_binary(), "run", name, "--nats", nats.url, "--repo", str(repo.path),
            "--data-dir", str(tmp_path / "data" / name), "--listen", f"127.0.0.1:{free_port()}",
            "--interval", "0.2"], tmp_path / f"{name}.log", env={"HOOK_URL": "http://127.0.0.1:9/"})

    bus = await EventBus.connect(nats.url, name="lifecycle")
    try:
        for name in ("applier", "renderer", "git-watcher"):
            procs[name] = service(name)
            await procs[name].start()
        await first_sight(nats.url, commits)
        commits += await burst(repo, 40, seconds=1.0, rng=random.Random(3))
        # the applier holds work: some of the burst is applied, some not yet
        await follow(bus, lambda evs: sum(e.type == ev.APPLY_SUCCEEDED for e in evs) >= 5, 30)
        assert await procs["applier"].terminate(timeout=20) == 0
        log = procs["applier"].log_path.read_text()
        assert "service.stopped" in log
        procs["applier"] = service("applier")
        await procs["applier"].start()
        expected = {(sha, env) for sha, touched in commits for env in touched}
        await follow(bus, Quiescence(expected), 60)
        check_branches(repo, commits, tmp_path)  # newest render, in order, none applied twice
        assert {e for _, e in expected} <= set(ENVS)
    finally:
        await bus.close()
        for proc in procs.values():
            if proc.running:
                assert await proc.terminate(timeout=20) == 0
        await nats.stop()
