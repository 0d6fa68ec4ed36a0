"""What a new user runs into, as they run it: the `conveyor` command against real nats-server
processes and real git repositories made with the git CLI."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.domain import events as ev
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import commit, git, init_repo
from tests.support.waits import wait_for_events
from tests.test_cli import CONVEYOR, _wait_applied, run

PLAIN_CONFIG = "environments:\n  dev:\n    path: envs/dev\n"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: dev\n" \
            "data:\n  greeting: {greeting}\n"


def plain_repo(path: Path) -> str:
    init_repo(path)
    return commit(path, {"conveyor.yaml": PLAIN_CONFIG,
                         "envs/dev/app.yaml": CONFIGMAP.format(greeting="hello")}, "initial")


async def test_a_second_up_on_the_same_data_dir_fails_and_leaves_the_first_running(
        tmp_path: Path) -> None:
    work = tmp_path / "repo"
    first = plain_repo(work)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    data = str(tmp_path / "data")
    proc = await asyncio.create_subprocess_exec(
        *CONVEYOR, "up", "--repo", str(work), "--data-dir", data,
        "--listen", f"127.0.0.1:{port}", "--interval", "0.2",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await _wait_applied(api, {"dev"}, first)
        code, _, err = await run("up", "--repo", str(work), "--data-dir", data,
                                 "--listen", f"127.0.0.1:{free_port()}", timeout=60)
        assert code == 1, err[-2000:]
        assert "in use by another Conveyor" in err and "Traceback" not in err
        # the first one still has its server: a new commit still flows
        second = commit(work, {"envs/dev/app.yaml": CONFIGMAP.format(greeting="again")}, "2nd")
        await _wait_applied(api, {"dev"}, second)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert b"Traceback" not in stderr, stderr.decode()[-3000:]
    pid = int((tmp_path / "data" / "nats" / "nats-server.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "embedded nats-server outlived `up`"


async def test_the_data_dir_lock_is_released_on_stop(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    other = EmbeddedNats(tmp_path / "nats")
    with pytest.raises(Exception, match="in use by another Conveyor"):
        await other.start()
    await server.stop()
    await other.start()  # the same data dir, free again
    await other.stop()


def _not_git(tmp: Path) -> tuple[str, str]:
    (tmp / "plain-dir").mkdir()
    return str(tmp / "plain-dir"), "is not a git repository"


def _empty(tmp: Path) -> tuple[str, str]:
    return str(init_repo(tmp / "empty")), "has no commits yet"


def _no_config(tmp: Path) -> tuple[str, str]:
    init_repo(tmp / "nocfg")
    commit(tmp / "nocfg", {"README.md": "hi\n"}, "readme")
    return str(tmp / "nocfg"), "has no conveyor.yaml at its root"


@pytest.mark.parametrize(("make", "args"), [
    (lambda tmp: (str(tmp / "missing"), "no such directory"), []),
    (_not_git, []),
    (_empty, []),
    (_no_config, []),
    (lambda tmp: (str(tmp / "repo"), "has no branch 'nope' (its branches: main)"),
     ["--branch", "nope"]),
])
async def test_up_refuses_a_repository_it_cannot_watch(
        tmp_path: Path, make: Callable[[Path], tuple[str, str]], args: list[str]) -> None:
    plain_repo(tmp_path / "repo")
    path, message = make(tmp_path)
    code, _, err = await run("up", "--repo", path, "--data-dir", str(tmp_path / "data"),
                             "--listen", "127.0.0.1:0", *args, timeout=60)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "data").exists(), "nothing was started"


async def test_run_suggests_the_service_meant() -> None:
    code, _, err = await run("run", "gitwatcher", timeout=60)
    assert code == 2 and "did you mean 'git-watcher'?" in err


@pytest.fixture
async def conveyor(tmp_path: Path, nats_server: EmbeddedNats) -> AsyncIterator[Conveyor]:
    plain_repo(tmp_path / "repo")
    conveyor = Conveyor(Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                                 repo=str(tmp_path / "repo"), branch="main",
                                 listen="127.0.0.1:0", interval=3600.0))
    await conveyor.start()
    yield conveyor
    await conveyor.stop()  # a no-op when the test stopped it


def api_url(conveyor: Conveyor) -> str:
    api = conveyor.service("api")
    assert isinstance(api, ApiService)
    return api.url


async def test_status_says_when_conveyor_yaml_is_invalid(
        conveyor: Conveyor, tmp_path: Path) -> None:
    assert conveyor.bus is not None
    await wait_for_events(conveyor.bus, lambda evs: any(
        e.type == ev.APPLY_SUCCEEDED for e in evs))  # the first commit, with a good config
    work = tmp_path / "repo"
    bad = commit(work, {"conveyor.yaml": "environments:\n  dev:\n    paht: envs/dev\n"},
                 "typo")
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    watcher.trigger()
    await wait_for_events(conveyor.bus, lambda evs: any(
        e.type == ev.CONFIG_INVALID and e.correlationid == bad for e in evs))
    code, out, err = await run("status", "--api", api_url(conveyor), timeout=60)
    assert code == 0, err
    assert (f"! conveyor.yaml at {bad[:7]} is invalid (the last good configuration stays in "
            "force): conveyor.yaml:3: environments.dev.paht: unknown key 'paht'") in out
    assert "\ndev " in out  # the table still follows
    good = commit(work, {"conveyor.yaml": PLAIN_CONFIG}, "fixed")
    watcher.trigger()
    await wait_for_events(conveyor.bus, lambda evs: any(
        e.type == ev.CONFIG_LOADED and e.correlationid == good for e in evs))
    code, out, _ = await run("status", "--api", api_url(conveyor), timeout=60)
    assert code == 0 and "!" not in out


async def test_live_streams_end_at_once_on_shutdown(
        conveyor: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    url = api_url(conveyor)
    follower = await asyncio.create_subprocess_exec(
        *CONVEYOR, "log", "--follow", "--api", url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert follower.stdout is not None
    try:
        # the follower is connected once it prints an event published after it connected
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.post(f"{url}/api/v1/refresh") as resp:
                    assert resp.status == 202
                try:
                    line = await asyncio.wait_for(follower.stdout.readline(), 0.5)
                except TimeoutError:
                    continue  # not connected yet: that refresh went by unseen
                assert b"refresh.requested" in line
                break
        with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
            loop = asyncio.get_running_loop()
            started = loop.time()
            await conveyor.stop()
            # the api's shutdown timeout is 2 s: an open stream no longer waits it out
            assert loop.time() - started < 1.9
        assert not [r for r in caplog.records if r.name == "aiohttp.server"]
        _, err = await asyncio.wait_for(follower.communicate(), 30)
        assert follower.returncode == 1
        assert b"closed the stream" in err and b"Traceback" not in err
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()


async def test_the_demo_resumes_on_its_data_dir_after_a_one_environment_commit(
        tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = {"CONVEYOR_DEMO_EXIT": "1"}
    code, _, err = await run("demo", "--data-dir", str(demo), "--listen", "127.0.0.1:0",
                             env=env)
    assert code == 0, err[-3000:]
    # what the demo invites: a commit with the git CLI that touches dev only
    overlay = demo / "repo" / "envs" / "dev" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("value: 2", "value: 4"))
    git(demo / "repo", "commit", "-qam", "dev to 4 replicas")
    code, out, err = await run("demo", "--data-dir", str(demo), "--listen", "127.0.0.1:0",
                               env=env)
    assert code == 0, out + err[-3000:]
    assert "1. Resuming the demo repository" in out
    assert "dev: commit -> apply.succeeded" in out and "prod: commit -> apply.succeeded" in out
    assert "_: commit" not in out  # no latency line for events of no environment

