"""``POST /api/v1/webhooks/{provider}`` on the real api with a real nats-server, fed the
providers' realistic deliveries (tests/fixtures/webhooks): signatures, replays, size cap,
pings, matching to sources, and end to end to a ``commit.detected`` over git://."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conveyor.app import Conveyor
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.webhooks import sign
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.api.routes_webhooks import prune
from tests.support.gitservers import GitDaemon, Upstream
from tests.support.waits import wait_for_events

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "It's a Secret to Everybody"

CONFIG = """\
sources:
  gh:
    url: https://github.com/codertocat/hello-world
    branch: main
  gh-develop:
    url: git@github.com:Codertocat/Hello-World.git
    branch: develop
  gl:
    url: git@example.com:mike/diaspora.git
    branch: master
  gitea:
    url: ssh://gitea@localhost:2222/gitea/webhooks.git
    branch: develop
  fj:
    url: https://codeberg.org/Platform/deploy-config.git
    branch: main
  bb:
    url: git@bitbucket.org:acme/deploy-config.git
    branch: main
  gen:
    url: ssh://git@git.internal.example:2222/platform/deploy.git
    branch: release
  own:
    url: https://github.com/Codertocat/Hello-World.git
    branch: main
    webhook:
      secret: ${OWN_HOOK_SECRET}
environments:
  a: {path: a, source: gh}
  b: {path: b, source: gh-develop}
  c: {path: c, source: gl}
  d: {path: d, source: gitea}
  e: {path: e, source: fj}
  f: {path: f, source: bb}
  g: {path: g, source: gen}
  h: {path: h, source: own}
"""

PUSHES = {  # provider -> (fixture, the source it must trigger)
    "github": ("github-push", ["gh", "own"]),
    "gitlab": ("gitlab-push", ["gl"]),
    "gitea": ("gitea-push", ["gitea"]),
    "forgejo": ("forgejo-push", ["fj"]),
    "bitbucket": ("bitbucket-push", ["bb"]),
    "generic": ("generic-push", ["gen"]),
}


def delivery(name: str, provider: str, secret: str | None = SECRET
             ) -> tuple[dict[str, str], bytes]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    body = json.dumps(data["payload"], indent=2).encode()
    headers = dict(data["headers"])
    if secret is not None:
        headers.update(sign(provider, body, secret))
    return headers, body


async def publish_config(bus: EventBus, text: str, key: str = "1") -> None:
    await bus.publish(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation="c" * 40,
                                source="test", key=key,
                                data={"text": text, "branch": "main", "source": "default"}))


async def refreshes(bus: EventBus) -> list[Event]:
    return [s.event async for s in bus.read(subjects.filter_for(ev.REFRESH_REQUESTED))]


@pytest.fixture
async def api(nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("CONVEYOR_WEBHOOK_MAX_BYTES", raising=False)
    await publish_config(bus, CONFIG)
    service = ApiService(Resources.around(bus, Settings(
        nats_url=nats_server.url, data_dir=tmp_path / "d", repo=str(tmp_path / "primary"),
        branch="main", listen="127.0.0.1:0", secrets=SecretPolicy(env_allow=("OWN_*",)))))
    await service.start()
    try:
        yield service.url
    finally:
        await service.stop()


async def post(url: str, provider: str, headers: dict[str, str],
               body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{url}/api/v1/webhooks/{provider}", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("provider", sorted(PUSHES))
async def test_signed_push_triggers_a_fetch_of_the_matching_source_only(
        api: str, bus: EventBus, provider: str) -> None:
    fixture, expected = PUSHES[provider]
    headers, body = delivery(fixture, provider)
    status, answer = await post(api, provider, headers, body)
    assert (status, answer["matched"]) == (202, expected)
    found = await refreshes(bus)
    assert sorted(e.data["source"] for e in found) == expected
    assert all(e.data["by"] == f"webhook:{provider}" for e in found)


@pytest.mark.parametrize("provider", sorted(PUSHES))
async def test_bad_or_missing_signature_is_401_and_triggers_nothing(
        api: str, bus: EventBus, provider: str) -> None:
    fixture, _ = PUSHES[provider]
    headers, body = delivery(fixture, provider, secret="not the secret")
    assert (await post(api, provider, headers, body))[0] == 401
    headers, body = delivery(fixture, provider, secret=None)
    assert (await post(api, provider, headers, body))[0] == 401
    if provider != "gitlab":  # GitLab sends a plain token: nothing binds it to the body
        good_headers, _ = delivery(fixture, provider)
        tampered = body[:-1] + b" }"  # one byte more, still the same JSON
        assert (await post(api, provider, good_headers, tampered))[0] == 401
    assert await refreshes(bus) == []


@pytest.mark.parametrize("provider", sorted(PUSHES))
async def test_a_replayed_delivery_is_ignored(api: str, bus: EventBus, provider: str) -> None:
    fixture, expected = PUSHES[provider]
    headers, body = delivery(fixture, provider)
    assert (await post(api, provider, headers, body))[0] == 202
    status, answer = await post(api, provider, headers, body)
    assert (status, answer["ignored"]) == (200, "duplicate delivery")
    assert len(await refreshes(bus)) == len(expected)


@pytest.mark.parametrize("provider", sorted(PUSHES))
async def test_oversize_payload_is_413(api: str, bus: EventBus, provider: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fixture, _ = PUSHES[provider]
    headers, body = delivery(fixture, provider)
    monkeypatch.setenv("CONVEYOR_WEBHOOK_MAX_BYTES", str(len(body) - 1))
    assert (await post(api, provider, headers, body))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to check
        for i in range(0, len(body), 64):
            yield body[i:i + 64]

    assert (await post(api, provider, headers, chunks()))[0] == 413
    monkeypatch.setenv("CONVEYOR_WEBHOOK_MAX_BYTES", str(len(body)))
    assert (await post(api, provider, headers, body))[0] == 202
    assert len({e.data["delivery"] for e in await refreshes(bus)}) == 1


@pytest.mark.parametrize(("provider", "fixture"), [
    ("github", "github-ping"), ("bitbucket", "bitbucket-ping"), ("generic", "generic-ping")])
async def test_ping_answers_200(api: str, bus: EventBus, provider: str, fixture: str) -> None:
    headers, body = delivery(fixture, provider)
    status, answer = await post(api, provider, headers, body)
    assert (status, answer["event"]) == (200, "ping")
    assert await refreshes(bus) == []


@pytest.mark.parametrize("provider", sorted(PUSHES))
async def test_a_push_to_no_configured_source_is_202_with_no_match(
        api: str, bus: EventBus, provider: str) -> None:
    await publish_config(bus, "sources:\n  other:\n    url: https://git.example/x/y.git\n"
                              "environments:\n  o: {path: o, source: other}\n", key="2")
    fixture, _ = PUSHES[provider]
    headers, body = delivery(fixture, provider)
    assert await post(api, provider, headers, body) == (202, {
        "matched": [], "delivery": headers[next(
            h for h in headers if h.lower() in ("x-github-delivery", "x-gitlab-event-uuid",
                                                 "x-gitea-delivery", "x-forgejo-delivery",
                                                 "x-request-uuid", "x-conveyor-delivery"))]})
    assert await refreshes(bus) == []


async def test_secrets_per_provider_and_per_source(api: str, bus: EventBus,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_WEBHOOK_SECRET")
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET_GITLAB", "gitlab-only")
    headers, body = delivery("gitlab-push", "gitlab", secret="gitlab-only")
    assert (await post(api, "gitlab", headers, body))[1]["matched"] == ["gl"]
    headers, body = delivery("github-push", "github", secret="gitlab-only")
    assert (await post(api, "github", headers, body))[0] == 401
    # a source's own secret authorises that source, not the others the push matches
    monkeypatch.setenv("OWN_HOOK_SECRET", "own-secret")
    headers, body = delivery("github-push", "github", secret="own-secret")
    assert (await post(api, "github", headers, body))[1]["matched"] == ["own"]


async def test_unknown_provider_and_invalid_json(api: str) -> None:
    assert (await post(api, "svn", {}, b"{}"))[0] == 404
    headers = sign("generic", b"not json", SECRET)
    assert (await post(api, "generic", headers, b"not json"))[0] == 400


async def test_old_delivery_ids_are_pruned(api: str, bus: EventBus) -> None:
    headers, body = delivery("generic-push", "generic")
    assert (await post(api, "generic", headers, body))[0] == 202
    assert await prune(bus) == 0  # young
    assert await prune(bus, ttl=0.0, now=float("inf")) == 1
    assert await prune(bus, ttl=0.0, now=float("inf")) == 0
    # forgotten by the bucket, the delivery is still a duplicate inside JetStream's window:
    # the refresh event's id derives from the delivery id
    status, answer = await post(api, "generic", headers, body)
    assert (status, answer["ignored"]) == (200, "duplicate delivery")
    assert len(await refreshes(bus)) == 1


# --------------------------------------------------------------------------- end to end


async def test_webhook_to_commit_detected_over_git_daemon(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A push notification makes the watcher fetch; the payload's SHA is not trusted."""
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", SECRET)
    up = Upstream(tmp_path / "srv", "config")
    first = up.push({"conveyor.yaml": "environments:\n  dev: {path: dev}\n",
                     "dev/cm.yaml": "a: 1\n"}, "first")
    async with GitDaemon(up.root) as daemon:
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=daemon.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        conveyor = Conveyor(settings, names=("api", "git-watcher"))
        await conveyor.start()
        try:
            await wait_for_events(bus, lambda evs: any(
                e.type == ev.COMMIT_DETECTED and e.correlationid == first for e in evs))
            second = up.push({"dev/cm.yaml": "a: 2\n"}, "second")
            payload = {"repository": daemon.url("config.git"), "ref": "refs/heads/main",
                       "after": "f" * 40}  # a lie: only what the fetch finds counts
            body = json.dumps(payload).encode()
            headers = {"X-Conveyor-Event": "push", "X-Conveyor-Delivery": "e2e-1",
                       "Content-Type": "application/json", **sign("generic", body, SECRET)}
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            status, answer = await post(api.url, "generic", headers, body)
            assert (status, answer["matched"]) == (202, ["default"])
            events = await wait_for_events(bus, lambda evs: any(
                e.type == ev.COMMIT_DETECTED and e.correlationid == second for e in evs))
        finally:
            await conveyor.stop()
    assert not any(e.correlationid == "f" * 40 for e in events)
