"""The `conveyor` command as a user runs it: demo, up (signals, restart), guards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import free_port
from tests.support.repos import Repo

CONVEYOR = [sys.executable, "-m", "conveyor"]


async def run(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CONVEYOR, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_demo_shows_a_commit_flowing_to_both_environments(tmp_path: Path) -> None:
    code, out, err = await run("demo", "--data-dir", str(tmp_path / "demo"),
                               "--listen", "127.0.0.1:0", env={"CONVEYOR_DEMO_EXIT": "1"})
    assert code == 0, err[-3000:]
    assert "1. First sync" in out and "2. A developer merges commit" in out
    assert "dev: commit -> apply.succeeded" in out and "prod: commit -> apply.succeeded" in out
    repo = Repo(tmp_path / "demo" / "repo")
    assert "dev/deployment.apps-web.yaml" in repo.files("deploy/dev")
    assert len(repo.log("deploy/prod")) == 2


async def test_up_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_API_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        *CONVEYOR, "up", "--repo", str(tmp_path), "--listen", "0.0.0.0:8099",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"CONVEYOR_API_TOKEN" in err


async def _wait_applied(api: str, envs: set[str], revision: str, timeout: float = 60) -> None:
    """Follow the api's live event stream (from the start) until every env applied it."""
    async def connect() -> aiohttp.ClientResponse:
        for _ in range(600):  # the other process may not listen yet: connection refused
            try:
                return await http.get(f"{api}/api/v1/events/stream", params={"after": "0"})
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # retry a refused connect; nothing to await
        raise AssertionError(f"{api} never answered")

    async def follow() -> None:
        done: set[str] = set()
        resp = await connect()
        async for raw in resp.content:
            line = raw.decode()
            if not line.startswith("data: "):
                continue
            e = json.loads(line[6:])
            if e["correlationid"] == revision and e["type"] in (
                    "conveyor.apply.succeeded", "conveyor.apply.skipped"):
                done.add(e["subject"])
                if done >= envs:
                    resp.close()
                    return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        await asyncio.wait_for(follow(), timeout)


async def test_up_stops_cleanly_on_sigterm_and_recovers_after_sigkill(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.commit(demo_files(), "initial")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    args = ["up", "--repo", str(repo.path), "--data-dir", str(tmp_path / "data"),
            "--listen", f"127.0.0.1:{port}", "--interval", "0.2"]

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *CONVEYOR, *args, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)

    proc = await start()
    await _wait_applied(api, {"dev", "prod"}, first)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    pid_file = tmp_path / "data" / "nats" / "nats-server.pid"
    nats_pid = int(pid_file.read_text())
    assert not Path(f"/proc/{nats_pid}").exists(), "embedded nats-server outlived `up`"

    # SIGKILL: the restart finds the old store (and possibly the old server) and continues
    proc = await start()
    second = repo.commit(demo_files(tag="9.9"), "after restart")
    await _wait_applied(api, {"dev", "prod"}, second)
    proc.kill()
    await proc.wait()
    third = repo.commit(demo_files(tag="10.0"), "while killed")
    proc = await start()
    try:
        await _wait_applied(api, {"dev", "prod"}, third)
        async with aiohttp.ClientSession() as http, http.get(
                f"{api}/api/v1/events", params={"type": "conveyor.commit.detected"}) as resp:
            events = (await resp.json())["events"]
        pairs = [(e["correlationid"], e["subject"]) for e in events]
        assert len(pairs) == len(set(pairs)), "a commit was announced twice"
        assert {first, second, third} <= {sha for sha, _ in pairs}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)


def test_render_concurrency_is_configurable() -> None:
    from conveyor import cli, options

    args = cli.build_parser().parse_args(["up", "--repo", ".", "--render-concurrency", "7"])
    assert options.settings_from_args(args).render_concurrency == 7
    args = cli.build_parser().parse_args(["run", "renderer", "--nats", "nats://x:1"])
    assert options.settings_from_args(args).render_concurrency == 4
