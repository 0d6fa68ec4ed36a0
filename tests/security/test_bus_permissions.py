"""Least privilege on the bus: each service's NATS user may publish, read and write only what
``orchestrator/adapters/nats_permissions.py`` grants it, on a real nats-server, and the whole
pipeline still works with those users, in ``conveyor up`` (each service its own connection)
and as one process per service (``conveyor run``, as in k8s). The k8s config and the table in
docs/security.md are the generated ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from conveyor.app import Conveyor
from orchestrator import subjects
from orchestrator.adapters import nats_auth, nats_permissions
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from tests.support.crash import ServiceProcess, WebhookReceiver, conveyor_binary
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

ROOT = Path(__file__).resolve().parents[2]
ENVS = ("a", "b")
CONFIG = "environments:\n" + "".join(
    f"  {e}:\n    path: envs/{e}\n    target:\n      git:\n        branch: deploy/{e}\n"
    for e in ENVS) + (
    "notifiers:\n  hook:\n    type: webhook\n    url: ${HOOK_URL}\n    events:\n"
    f"      - {ev.APPLY_SUCCEEDED}\n")


def files(n: int) -> dict[str, str]:
    return {"conveyor.yaml": CONFIG, **{
        f"envs/{e}/cm.yaml": (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"
                              f"  namespace: {e}\ndata:\n  n: \"{n}\"\n") for e in ENVS}}


def deployed_and_notified(sha: str):  # type: ignore[no-untyped-def]
    """Every environment applied ``sha`` and the notifier sent each apply."""
    def check(events: list[Event]) -> bool:
        applied = {e.id for e in events
                   if e.correlationid == sha and e.type == ev.APPLY_SUCCEEDED}
        sent = {e.causationid for e in events if e.type == ev.NOTIFY_SENT}
        return len(applied) == len(ENVS) and applied <= sent

    return check


def violations(server_log: Path) -> list[str]:
    return [line for line in server_log.read_text(errors="replace").splitlines()
            if "Violation" in line]


# -- the table, the k8s config and the docs are one ---------------------------------------------

def test_k8s_and_the_docs_say_what_the_table_grants() -> None:
    conf = (ROOT / "k8s" / "base" / "nats.yaml").read_text()
    generated = nats_permissions.k8s_users_block()
    shipped = "\n".join(line.removeprefix("      ") for line in conf.splitlines())
    assert generated in shipped, "k8s/base/nats.yaml: run python -m " \
        "orchestrator.adapters.nats_permissions and paste its users"
    doc = (ROOT / "docs" / "security.md").read_text()
    assert nats_permissions.docs_table() in doc, "docs/security.md: the NATS permission " \
        "table is python -m orchestrator.adapters.nats_permissions docs"


def test_the_embedded_server_config_has_every_user(tmp_path: Path) -> None:
    creds = nats_auth.load_or_create(tmp_path)
    block = nats_auth.authorization_block(creds)
    assert f'{{user: "{nats_permissions.OPERATOR}", password: {json.dumps(creds.password)}}}' \
        in block  # the operator: every permission
    flat = "\n".join(line.strip() for line in block.splitlines())
    for user in nats_permissions.SERVICES:
        entry = nats_permissions.user_entry(user, json.dumps(creds.services[user]))
        assert "\n".join(line.strip() for line in entry.splitlines()) in flat, user
    # one password each, none the same, all kept 0600 and stable across loads
    passwords = [creds.password, *creds.services.values()]
    assert len(set(passwords)) == len(passwords) == 1 + len(nats_permissions.SERVICES)
    assert nats_auth.load_or_create(tmp_path) == creds
    assert oct((tmp_path / nats_auth.CREDENTIALS_FILE).stat().st_mode & 0o777) == "0o600"


def test_an_old_credentials_file_keeps_its_operator_password(tmp_path: Path) -> None:
    (tmp_path / nats_auth.CREDENTIALS_FILE).write_text(
        json.dumps({"user": "conveyor", "password": "old-one"}))
    creds = nats_auth.load_or_create(tmp_path)
    assert creds.password == "old-one" and set(creds.services) == \
        set(nats_permissions.SERVICES)


# -- what the server refuses each user ------------------------------------------------------------

@contextlib.asynccontextmanager
async def connected(server: EmbeddedNats, user: str) -> AsyncIterator[tuple[Client, list[str]]]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(server.url_for(user), allow_reconnect=False, connect_timeout=5,
                            error_cb=on_error, name=f"attacker-{user}",
                            inbox_prefix=nats_permissions.inbox_prefix(user))
    try:
        yield nc, errors
    finally:
        await nc.close()


async def refused(nc: Client, errors: list[str], subject: str) -> bool:
    """Publish on ``subject``; True when the server answered with a permissions violation."""
    before = len(errors)
    await nc.publish(subject, b"{}")
    await nc.flush()  # the -ERR for the PUB arrives before this flush's PONG
    await nc.flush()  # and error_cb runs in a task of its own
    return any("permissions violation" in e.lower() for e in errors[before:])


async def test_each_user_is_refused_what_its_grant_does_not_say(
        nats_server: EmbeddedNats, bus: EventBus) -> None:
    # the operator's bus (the fixture) created the schema; a delivery record and a bundle exist
    await bus.kv_put(subjects.DELIVERY_BUCKET, "d.secret", {"ref": "private"})
    await bus.put_bundle("sha256:" + "a" * 64, b"kind: Secret\n")
    cases = [  # (user, subject, the server allows it)
        ("renderer", "conveyor.events.dev.apply.succeeded", False),  # the forged apply
        ("renderer", "conveyor.events.dev.render.succeeded", True),
        ("renderer", "conveyor.events._.refresh.requested", False),
        ("renderer", "$JS.API.STREAM.DELETE.CONVEYOR", False),
        ("renderer", "$JS.API.STREAM.PURGE.CONVEYOR", False),
        ("renderer", "$JS.API.STREAM.UPDATE.CONVEYOR", False),
        ("renderer", "$JS.API.STREAM.MSG.GET.KV_conveyor-deliveries", False),
        ("renderer", "$JS.API.DIRECT.GET.KV_conveyor-deliveries.$KV.conveyor-deliveries.d",
         False),
        ("renderer", "$JS.API.CONSUMER.CREATE.KV_conveyor-deliveries", False),
        ("renderer", "$KV.conveyor-state.env.dev", False),  # the projection is the api's
        ("renderer", "$KV.conveyor-state.render.rk-1", True),
        ("renderer", "$O.conveyor-bundles.C.x", True),
        ("applier", "$O.conveyor-bundles.C.x", False),  # only the renderer writes bundles
        ("applier", "$KV.conveyor-leases.applier.x", True),
        ("applier", "conveyor.events.dev.render.succeeded", False),
        ("applier", "conveyor.events.dev.environment.pruned", True),
        ("applier", "conveyor.events.dev.environment.removed", False),
        ("git-watcher", "conveyor.events.dev.environment.removed", True),
        ("git-watcher", "conveyor.events.dev.environment.pruned", False),
        ("notifier", "$JS.API.CONSUMER.CREATE.OBJ_conveyor-bundles", False),  # Secrets
        ("notifier", "$JS.API.STREAM.MSG.GET.OBJ_conveyor-bundles", False),
        ("notifier", "$KV.conveyor-deliveries.d.x", True),
        ("git-watcher", "$JS.API.CONSUMER.CREATE.OBJ_conveyor-bundles", False),
        ("git-watcher", "$KV.conveyor-state.watcher.main", True),
        ("git-watcher", "$JS.API.STREAM.CREATE.CONVEYOR", False),
        ("api", "$JS.API.STREAM.CREATE.CONVEYOR", True),  # the api manages the schema
        ("api", "$JS.API.STREAM.DELETE.CONVEYOR", False),  # nobody deletes the log
        ("api", "$JS.API.STREAM.DELETE.KV_conveyor-replay-1-ab", False),  # no stream of its own
        ("api", "$JS.API.STREAM.CREATE.KV_anything", False),
        ("api", "$KV.conveyor-deliveries.d.x", False),
        ("api", "conveyor.events._.refresh.requested", True),
        # its own consumer, never another service's (reconfigure, pull, ack)
        ("renderer", "$JS.API.CONSUMER.CREATE.CONVEYOR.renderer.conveyor.events.*.commit.>",
         True),
        ("renderer", "$JS.API.CONSUMER.MSG.NEXT.CONVEYOR.renderer", True),
        ("renderer", "$JS.API.CONSUMER.CREATE.CONVEYOR.applier.conveyor.events.*.render.>",
         False),
        ("renderer", "$JS.API.CONSUMER.MSG.NEXT.CONVEYOR.applier", False),
        ("renderer", "$JS.ACK.CONVEYOR.applier.1.5.5.1700000000000000000.0", False),
        ("notifier", "$JS.API.CONSUMER.MSG.NEXT.CONVEYOR.projector", False),
        ("api", "$JS.API.CONSUMER.MSG.NEXT.CONVEYOR.notifier", False),
    ]
    for user in {u for u, _, _ in cases}:
        async with connected(nats_server, user) as (nc, errors):
            for who, subject, allowed in cases:
                if who != user:
                    continue
                # the table says it, and the server does it
                assert nats_permissions.may_publish(user, subject) is allowed, (user, subject)
                assert await refused(nc, errors, subject) is not allowed, (user, subject)
    async with connected(nats_server, "renderer") as (nc, errors):
        js = nc.jetstream(timeout=2)
        # the forged apply never reaches the log
        with pytest.raises(Exception):  # noqa: B017 (a violation: no ack ever comes)
            await js.publish(subjects.event_subject("dev", ev.APPLY_SUCCEEDED), b"{}",
                             stream=subjects.STREAM)
        assert await bus.last_event("dev", ev.APPLY_SUCCEEDED) is None
        # the notifier's deliveries cannot be read
        deliveries = await js.key_value(subjects.DELIVERY_BUCKET)  # its info: allowed
        with pytest.raises(Exception):  # noqa: B017
            await deliveries.get("d.secret")
        # the log cannot be deleted
        with pytest.raises(Exception):  # noqa: B017
            await js.delete_stream(subjects.STREAM)
        assert (await bus.js.stream_info(subjects.STREAM)).config.name == subjects.STREAM
        # nor another user's replies listened to
        for inbox in ("_INBOX.>", "_INBOX_applier.>", ">"):
            before = len(errors)
            await nc.subscribe(inbox)
            await nc.flush()
            await nc.flush()
            assert any("permissions violation" in e.lower() for e in errors[before:]), inbox
    async with connected(nats_server, "notifier") as (nc, _):
        store = await nc.jetstream(timeout=2).object_store(subjects.BUNDLE_BUCKET)
        with pytest.raises(Exception):  # noqa: B017 (bundles hold the Secrets)
            await store.get("sha256-" + "a" * 64)
    assert await bus.get_bundle("sha256:" + "a" * 64) == b"kind: Secret\n"  # the control


async def test_a_service_waits_for_the_schema_the_api_creates(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        waiting = asyncio.create_task(EventBus.connect(server.url_for("renderer"),
                                                       name="renderer", retry_for=None))
        # bounded: it must still be waiting (and have created nothing) after 2 s
        done, _ = await asyncio.wait({waiting}, timeout=2)
        assert not done, "the renderer connected without the schema"
        api = await EventBus.connect(server.url_for("api"), name="api", retry_for=0)
        renderer = await asyncio.wait_for(waiting, 30)
        assert renderer.epoch == api.epoch != ""
        await renderer.close()
        await api.close()
    finally:
        await server.stop()
    assert not violations(server.data_dir / "nats-server.log")


# -- the pipeline with per-service users -----------------------------------------------------------

def settings(repo: Repo, data: Path, nats_url: str = "") -> Settings:
    return Settings(nats_url=nats_url, data_dir=data, repo=str(repo.path), branch="main",
                    listen="127.0.0.1:0", interval=0.3,
                    secrets=SecretPolicy(env_allow=("HOOK_URL",)))


async def test_up_connects_each_service_as_its_own_user(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repo(tmp_path / "repo")
    receiver = WebhookReceiver()
    await receiver.start()
    monkeypatch.setenv("HOOK_URL", receiver.url)
    first = repo.commit(files(0), "initial")
    conveyor = Conveyor(settings(repo, tmp_path / "data"))
    await conveyor.start()
    try:
        resources = conveyor.resources
        assert resources is not None and resources.embedded is not None
        assert set(resources.buses) == set(nats_permissions.SERVICES)
        for name, service_bus in resources.buses.items():  # its own user, its own inbox
            assert service_bus.nc._inbox_prefix.decode() == f"_INBOX_{name}"
        assert conveyor.bus is not None
        await wait_for_events(conveyor.bus, deployed_and_notified(first), timeout=60)
        # readiness (the api's /readyz too) looks at every service's connection and consumer
        durables = set().union(*(b.durables for b in resources.buses.values()))
        assert {"renderer", "applier", "notifier", "git-watcher"} <= durables
        assert await resources.for_service("api").not_ready() is None
        second = repo.commit(files(1), "the next commit")
        await wait_for_events(conveyor.bus, deployed_and_notified(second), timeout=60)
        assert len(receiver.posts) >= 2 * len(ENVS)
        # an environment removed: the watcher announces it (a static environment is orphaned;
        # the applier's environment.pruned, for generated ones, is in the table test above)
        only_a = {**files(2), "conveyor.yaml": CONFIG.replace(
            "  b:\n    path: envs/b\n    target:\n      git:\n        branch: deploy/b\n", "")}
        assert "  b:" not in only_a["conveyor.yaml"]
        repo.commit(only_a, "remove b")
        await wait_for_events(conveyor.bus, lambda es: any(
            e.type == ev.ENV_REMOVED and e.subject == "b" for e in es), timeout=60)
    finally:
        await conveyor.stop()
        await receiver.stop()
    assert not violations(tmp_path / "data" / "nats" / "nats-server.log")


async def test_one_process_per_service_each_as_its_own_user(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.commit(files(0), "initial")
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    receiver = WebhookReceiver()
    await receiver.start()
    creds = server.credentials
    assert creds is not None
    started: list[ServiceProcess] = []
    try:
        for name in ("git-watcher", "renderer", "applier", "notifier", "api"):
            started.append(ServiceProcess(name, [
                conveyor_binary(), "run", name, "--nats", server.public_url, "--repo",
                str(repo.path), "--data-dir", str(tmp_path / name),
                "--listen", f"127.0.0.1:{free_port()}", "--interval", "0.3",
            ], tmp_path / f"{name}.log", env={
                "HOOK_URL": receiver.url, "CONVEYOR_ENV_ALLOW": "HOOK_URL",
                "CONVEYOR_NATS_USER": name, "CONVEYOR_NATS_PASSWORD": creds.services[name]}))
        # all at once: the four that may not create the schema wait for the api to
        await asyncio.gather(*(p.start(timeout=90) for p in started))
        bus = await EventBus.connect(server.url, name="test")
        try:
            await wait_for_events(bus, deployed_and_notified(first), timeout=90)
            second = repo.commit(files(1), "the next commit")
            await wait_for_events(bus, deployed_and_notified(second), timeout=90)
        finally:
            await bus.close()
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                await proc.terminate(timeout=15)
        await receiver.stop()
        await server.stop()
    found = violations(server.data_dir / "nats-server.log")
    assert not found, found[:5]
    for proc in started:
        assert "Traceback" not in proc.log_path.read_text(), proc.name


def test_docs_table_is_regenerated_by_the_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "orchestrator.adapters.nats_permissions",
                          "docs"], capture_output=True, text=True, env=env, check=True).stdout
    assert re.sub(r"\s+$", "", out) == nats_permissions.docs_table()
