"""The bus credentials from the operator's side: a refused password fails fast (it was retried
for ever, silently to whoever watched only the exit status), an unreachable server is still
retried, and the operator's own commands (``replay --nats``, ``diff --nats``) find the
credentials ``conveyor up`` generated in its data dir."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from conveyor.demo import demo_files
from orchestrator.adapters import nats_auth
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.errors import PermanentError, TransientError
from tests.support.crash import ServiceProcess, conveyor_binary, last_log_line
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


async def run_cli(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 60) -> tuple[int, str, str]:
    import os

    proc = await asyncio.create_subprocess_exec(
        conveyor_binary(), *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CONVEYOR_NATS_USER": "", "CONVEYOR_NATS_PASSWORD": "",
             **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_wrong_password_fails_fast_naming_the_server_and_user(
        nats_server: EmbeddedNats) -> None:
    wrong = nats_auth.with_credentials(nats_server.public_url, "conveyor", "not-the-password")
    started = time.monotonic()
    with pytest.raises(PermanentError) as refused:
        # retry_for=None: a service retries an unreachable server for ever; not this
        async with asyncio.timeout(30):
            await EventBus.connect(wrong, name="wrong", retry_for=None)
    assert refused.value.reason == "NatsUnauthorized"
    message = str(refused.value)
    assert nats_server.public_url.removeprefix("nats://") in message and "'conveyor'" in message
    assert "not-the-password" not in message
    assert time.monotonic() - started < 15  # one attempt, not a backoff series (loaded machine)
    with pytest.raises(PermanentError, match="without credentials"):
        await EventBus.connect(nats_server.public_url, name="none", retry_for=None)
    # the control: the right password connects
    bus = await EventBus.connect(nats_server.url, name="right", retry_for=0)
    await bus.close()


async def test_an_unreachable_server_is_still_retried() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TransientError) as unreachable:
        await EventBus.connect(url, name="nobody", retry_for=1.0)
    assert unreachable.value.reason == "NatsUnreachable"
    assert time.monotonic() - started >= 0.5  # at least one backoff before giving up


async def test_run_with_a_wrong_password_exits_non_zero(nats_server: EmbeddedNats,
                                                        tmp_path: Path) -> None:
    code, _, err = await run_cli(
        "run", "renderer", "--nats", nats_server.public_url, "--data-dir", str(tmp_path / "d"),
        "--listen", f"127.0.0.1:{free_port()}",
        env={"CONVEYOR_NATS_USER": "renderer", "CONVEYOR_NATS_PASSWORD": "guess-7a1f"})
    assert code == 1, err
    assert "refused user 'renderer'" in err and "guess-7a1f" not in err
    assert nats_server.public_url.removeprefix("nats://") in err


async def test_replay_and_diff_read_the_credentials_of_up(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.commit(demo_files(), "initial")
    data = tmp_path / "data"
    up = ServiceProcess("up", [
        conveyor_binary(), "up", "--repo", str(repo.path), "--data-dir", str(data),
        "--listen", f"127.0.0.1:{free_port()}", "--interval", "3600",
    ], tmp_path / "up.log", ready_count=5)
    await up.start()
    try:
        ready = last_log_line(up.log_path, "embedded_nats.ready")
        assert ready is not None
        url = str(ready["url"])
        assert "@" not in url  # the log shows the server without credentials
        creds = nats_auth.load(data / nats_auth.EMBEDDED_DIR)
        assert creds is not None
        bus = await EventBus.connect(nats_auth.with_credentials(url, creds.user,
                                                                creds.password), name="t")
        try:
            await wait_for_events(bus, lambda es: any(
                e.correlationid == first and e.type == "conveyor.apply.succeeded"
                for e in es), timeout=60)
        finally:
            await bus.close()
        # the operator's commands, given the data dir of `up`
        code, out, err = await run_cli("replay", "--nats", url, "--data-dir", str(data))
        assert code == 0, err
        assert "matches the log" in out
        code, out, err = await run_cli("replay", "--nats", url, "-o", "json",
                                       env={"CONVEYOR_DATA_DIR": str(data)})
        assert code == 0 and json.loads(out)["equal"], err
        # diff reads the render and its bundle through the bus: the demo deploys to a git
        # target, which diff (a kubernetes comparison) then refuses by name
        code, _, err = await run_cli("diff", "dev", "--nats", url, "--data-dir", str(data))
        assert code == 2 and "does not have a kubernetes target" in err, err
        # as in k8s (no operator user there): the api's user, from the environment, may replay
        # (into its scratch bucket) and diff (it reads bundles), on its own inbox prefix
        as_api = {"CONVEYOR_NATS_USER": "api", "CONVEYOR_NATS_PASSWORD": creds.services["api"]}
        code, out, err = await run_cli("replay", "--nats", url, env=as_api)
        assert code == 0 and "matches the log" in out, err
        code, _, err = await run_cli("diff", "dev", "--nats", url, env=as_api)
        assert code == 2 and "does not have a kubernetes target" in err, err
        # without the credentials: a clear refusal, exit 2, no password shown
        code, _, err = await run_cli("replay", "--nats", url, "--data-dir",
                                     str(tmp_path / "elsewhere"))
        assert code == 2 and "refused a connection without credentials" in err, err
        code, _, err = await run_cli("diff", "dev", "--nats", url, "--data-dir",
                                     str(tmp_path / "elsewhere"))
        assert code == 2 and "refused a connection without credentials" in err, err
        assert creds.password not in (up.log_path.read_text() + err)
    finally:
        assert await up.terminate(timeout=30) == 0


def test_only_a_refusal_of_the_credentials_is_permanent() -> None:
    from orchestrator.adapters.nats_bus import is_auth_error

    assert is_auth_error(Exception("nats: 'Authorization Violation'"))
    assert is_auth_error(Exception("nats: 'User Authentication Expired'"))
    # a slow CONNECT on a loaded host, or a server going away, is worth another attempt
    assert not is_auth_error(Exception("nats: 'Authentication Timeout'"))
    assert not is_auth_error(ConnectionResetError(104, "Connection reset by peer"))
