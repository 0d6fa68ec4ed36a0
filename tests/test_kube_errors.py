"""Errors are classified at the boundary; transient ones are retried inside the client only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import structlog

from orchestrator.adapters.kube import KubeClient, KubeConfig
from orchestrator.adapters.kube.errors import classify, parse_retry_after
from orchestrator.errors import ConflictError, PermanentError, TransientError
from tests.support.kubeapi import FakeKubeAPI

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
CM_PATH = "^/api/v1/namespaces/default/configmaps/c$"


class Sleeps(list[float]):
    """Stands in for asyncio.sleep: records each wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(fake: FakeKubeAPI, sleeps: Sleeps) -> AsyncIterator[KubeClient]:
    async with KubeClient(KubeConfig(server=fake.url), attempts=4, sleep=sleeps) as c:
        await c.resource("v1", "ConfigMap")      # discovery out of the way
        yield c


async def test_429_waits_retry_after_then_succeeds(client: KubeClient, fake: FakeKubeAPI,
                                                   sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 429, times=1, retry_after=7)
    out = await client.apply(CM)
    assert out["data"] == {"a": "1"}
    assert sleeps == [7.0]
    assert [r.status for r in fake.requests_to("PATCH", CM_PATH)] == [429, 201]


async def test_retry_after_is_capped(fake: FakeKubeAPI, sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 503, times=1, retry_after=3600)
    async with KubeClient(KubeConfig(server=fake.url), max_delay=5, sleep=sleeps) as client:
        await client.apply(CM)
    assert sleeps == [5.0]


async def test_500_is_retried_with_backoff_then_succeeds(client: KubeClient, fake: FakeKubeAPI,
                                                         sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 500, times=2)
    assert await client.get("v1", "ConfigMap", "default", "c") is None
    assert [r.status for r in fake.requests_to("GET", CM_PATH)] == [500, 500, 404]
    assert len(sleeps) == 2 and all(0 < s <= 1.0 for s in sleeps)


async def test_persistent_5xx_gives_up_after_the_attempts(client: KubeClient,
                                                          fake: FakeKubeAPI) -> None:
    fake.inject_failure(CM_PATH, 503, times=100, message="etcd is unhappy")
    with pytest.raises(TransientError) as err:
        await client.apply(CM)
    assert err.value.reason == "ServiceUnavailable"
    assert "etcd is unhappy" in str(err.value)
    assert len(fake.requests_to("PATCH", CM_PATH)) == 4


async def test_403_is_permanent_with_the_server_message(client: KubeClient,
                                                        fake: FakeKubeAPI) -> None:
    msg = ('configmaps "c" is forbidden: User "system:serviceaccount:conveyor:applier" cannot '
           'patch resource "configmaps" in API group "" in the namespace "default"')
    fake.inject_failure(CM_PATH, 403, message=msg)
    with pytest.raises(PermanentError) as err:
        await client.apply(CM)
    assert err.value.reason == "Forbidden" and msg in str(err.value)
    assert len(fake.requests_to("PATCH", CM_PATH)) == 1


async def test_409_race_is_a_conflict_retried_at_once(client: KubeClient, fake: FakeKubeAPI,
                                                      sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 409, message="the object has been modified")
    await client.apply(CM)
    assert sleeps == [0.0]


async def test_connection_refused_is_transient(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # closed again: nothing listens there
    async with KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}"), attempts=2,
                          sleep=sleeps) as client:
        with pytest.raises(TransientError) as err:
            await client.version()
    assert err.value.reason == "Unavailable" and len(sleeps) == 1


async def test_a_server_that_never_answers_times_out_as_transient(sleeps: Sleeps) -> None:
    never = asyncio.Event()
    accepted = 0

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await never.wait()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}"), timeout=0.2,
                              attempts=2, sleep=sleeps) as client:
            with pytest.raises(TransientError) as err:
                await client.version()
    finally:
        never.set()
        server.close()
        await server.wait_closed()
    assert err.value.reason == "Timeout" and accepted == 2


@pytest.mark.parametrize(("code", "body", "kind", "reason"), [
    (400, b'{"kind":"Status","message":"bad","reason":"BadRequest"}', PermanentError,
     "BadRequest"),
    (404, b'{"kind":"Status","message":"nope","reason":"NotFound"}', PermanentError, "NotFound"),
    (422, b'{"kind":"Status","message":"bad field","reason":"Invalid"}', PermanentError,
     "Invalid"),
    (409, b'{"kind":"Status","message":"exists","reason":"AlreadyExists"}', ConflictError,
     "AlreadyExists"),
    (409, b'{"kind":"Status","message":"Apply failed","reason":"Conflict","details":'
          b'{"causes":[{"reason":"FieldManagerConflict"}]}}', PermanentError,
     "FieldManagerConflict"),
    (502, b"<html>bad gateway</html>", TransientError, "HTTP502"),
])
def test_classification_table(code: int, body: bytes, kind: type[Exception],
                              reason: str) -> None:
    err = classify(code, body, method="PATCH", path="/x")
    assert type(err) is kind and err.reason == reason
    assert str(err).startswith("PATCH /x: ")


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


async def test_retries_are_logged_with_their_attempt_numbers(client: KubeClient,
                                                             fake: FakeKubeAPI,
                                                             sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 503, times=2, retry_after=1)
    with structlog.testing.capture_logs() as logs:
        await client.apply(CM)
    retries = [e for e in logs if e["event"] == "kube.retry"]
    assert [(e["attempt"], e["delay"]) for e in retries] == [(1, 1.0), (2, 1.0)]
    assert sleeps == [1.0, 1.0]
    assert [r.status for r in fake.requests_to("PATCH", CM_PATH)] == [503, 503, 201]


async def test_one_attempt_means_no_retry(fake: FakeKubeAPI, sleeps: Sleeps) -> None:
    fake.inject_failure(CM_PATH, 500, times=1)
    async with KubeClient(KubeConfig(server=fake.url), attempts=1, sleep=sleeps) as client:
        with pytest.raises(TransientError):
            await client.apply(CM)
    assert sleeps == [] and len(fake.requests_to("PATCH", CM_PATH)) == 1
