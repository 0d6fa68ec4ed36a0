"""Several servers, honest health, clean stop: ``conveyor run SERVICE`` as its own process.

- ``--nats`` takes a comma-separated list; a start against unreachable servers retries with
  backoff, one log line per attempt, and connects once one of them comes up;
- ``/livez`` answers while the loop runs (also while connecting), ``/readyz`` (= ``/healthz``)
  is 503 with the reason unless connected and the stream, buckets and the service's consumer
  answer;
- SIGTERM ends the process within 10 s while connecting, while running and while its server
  is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator import subjects
from orchestrator.adapters import nats_auth
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.adapters.nats_bus import EventBus, redact, server_list
from tests.support.crash import conveyor_binary

STOP_WITHIN = 10.0


class Proc:
    """A ``conveyor`` process whose JSON log lines can be awaited."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[dict[str, Any]] = []
        self._new = asyncio.Condition()
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))
            async with self._new:
                self._new.notify_all()
        async with self._new:
            self._new.notify_all()

    async def logged(self, event: str, count: int = 1, within: float = 30.0) -> list[Any]:
        async def seen() -> list[Any]:
            async with self._new:
                while True:
                    found = [entry for entry in self.lines if entry.get("event") == event]
                    if len(found) >= count:
                        return found
                    if self._pump.done():
                        raise AssertionError(f"exited before logging {event}: {self.lines}")
                    await self._new.wait()
        return await asyncio.wait_for(seen(), within)

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{self.port}{path}") as resp:
            return resp.status, await resp.json()

    async def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), STOP_WITHIN + 5)
        await self._pump
        return time.monotonic() - started


@contextlib.asynccontextmanager
async def run(service: str, nats: str, tmp: Path) -> AsyncIterator[Proc]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        conveyor_binary(), "--log-json", "run", service, "--nats", nats,
        "--data-dir", str(tmp / service), "--listen", f"127.0.0.1:{port}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env={**os.environ, "CONVEYOR_LOG_LEVEL": "info"})
    p = Proc(proc, port)
    try:
        yield p
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_status(p: Proc, path: str, status: int, within: float = 30.0) -> dict[str, Any]:
    """Until ``path`` answers ``status`` (a probe is polled, as kubelet does)."""
    deadline = time.monotonic() + within
    last: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            last = await p.get(path)
            if last[0] == status:
                return last[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} did not answer {status} within {within}s (last: {last})")


def test_server_lists_and_redaction() -> None:
    assert server_list("nats://a:4222, b:4222,") == ["nats://a:4222", "nats://b:4222"]
    assert redact("nats://user:secret@a:4222") == "nats://***@a:4222"
    assert "secret" not in redact("nats://tok3n-secret@a:4222")


async def test_a_start_against_unreachable_servers_retries_then_connects(
        tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    urls = ",".join(f"nats://user:hunter2@127.0.0.1:{p}" for p in ports)
    async with run("renderer", urls, tmp_path) as p:
        failed = await p.logged("nats.connect_failed", count=2)
        assert [f["attempt"] for f in failed[:2]] == [1, 2]
        assert failed[1]["retry_in"] > failed[0]["retry_in"]  # backoff
        assert all("hunter2" not in json.dumps(f) for f in failed)
        assert (await p.get("/livez"))[0] == 200
        status, body = await p.get("/readyz")
        assert status == 503 and body["reason"] == "connecting to NATS"
        assert (await p.get("/healthz"))[0] == 503

        # the second one comes up, requiring the user and password the URLs carry (the
        # embedded server keeps its credentials in its data dir: orchestrator.adapters.nats_auth)
        (tmp_path / "nats").mkdir(mode=0o700)
        nats_auth.write_private(tmp_path / "nats" / nats_auth.CREDENTIALS_FILE,
                                json.dumps({"user": "user", "password": "hunter2"}))
        server = EmbeddedNats(tmp_path / "nats", port=ports[1])
        await server.start()
        try:
            await p.logged("service.started", within=60)
            await wait_status(p, "/readyz", 200)
            assert (await p.get("/healthz"))[0] == 200
            assert await p.terminate() < STOP_WITHIN
            assert p.proc.returncode == 0
        finally:
            await server.stop()


async def test_sigterm_while_connecting_stops_within_ten_seconds(tmp_path: Path) -> None:
    async with run("applier", f"nats://127.0.0.1:{free_port()}", tmp_path) as p:
        await p.logged("nats.connect_failed", count=3)  # deep in the backoff
        assert await p.terminate() < STOP_WITHIN


@pytest.mark.parametrize("service", ["applier", "api"])
async def test_readiness_names_what_does_not_answer(tmp_path: Path, nats_server: EmbeddedNats,
                                                    service: str) -> None:
    durable = "applier" if service == "applier" else "projector"
    async with run(service, nats_server.url, tmp_path) as p:
        await p.logged("service.started")
        await wait_status(p, "/readyz", 200)
        bus = await EventBus.connect(nats_server.url, name="test")
        try:
            await bus.js.delete_consumer(subjects.STREAM, durable)
            body = await wait_status(p, "/readyz", 503)
            assert body["reason"] == f"consumer {durable} does not exist"
            assert (await p.get("/livez"))[0] == 200
        finally:
            await bus.close()
        await nats_server.stop()  # the server goes away
        body = await wait_status(p, "/readyz", 503)
        assert "disconnected" in body["reason"] or "did not answer" in body["reason"]
        assert (await p.get("/livez"))[0] == 200
        assert await p.terminate() < STOP_WITHIN  # and SIGTERM while it is gone
