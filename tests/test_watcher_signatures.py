"""Sources with ``verify:`` through the running git-watcher, on real SSH- and OpenPGP-signed
commits: a commit not signed by a trusted key is ``commit.rejected`` for each environment it
affects and never ``commit.detected`` (so never rendered)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import GitDaemon, Upstream, commit, init_repo, ssh_keygen
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

SIGNER = "release@conveyor.invalid"
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: '{v}'\n"


def of(events: list[Event], sha: str) -> list[tuple[str, str]]:
    return [(e.type, e.subject) for e in events if e.correlationid == sha
            and e.subject != ev.NO_ENV]


@contextlib.asynccontextmanager
async def watching(bus: EventBus, nats: EmbeddedNats, repo: str,
                   data: Path) -> AsyncIterator[GitWatcher]:
    # the trust stores live next to the data dir: the operator's secret directory here
    watcher = GitWatcher(Resources.around(bus, Settings(
        nats_url=nats.url, data_dir=data, repo=repo, branch="main", interval=3600.0,
        secrets=SecretPolicy(env_allow=("TRUST_DIR",), secrets_dirs=(str(data.parent),)))))
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


# --------------------------------------------------------------------------- SSH


def ssh_env(key: Path) -> dict[str, str]:
    return {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "gpg.format",
            "GIT_CONFIG_VALUE_0": "ssh", "GIT_CONFIG_KEY_1": "user.signingkey",
            "GIT_CONFIG_VALUE_1": str(key)}


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen missing")
async def test_ssh_verified_primary(nats_server: EmbeddedNats, bus: EventBus,
                                    tmp_path: Path) -> None:
    trusted = ssh_keygen(tmp_path / "trusted", comment=SIGNER)
    stranger = ssh_keygen(tmp_path / "stranger")
    allowed = tmp_path / "allowed_signers"
    pub = trusted.with_suffix(".pub").read_text().split()
    allowed.write_text(f'{SIGNER} namespaces="git" {pub[0]} {pub[1]}\n')
    config = ("sources:\n  default:\n    verify:\n      mode: ssh\n"
              f"      allowedSigners: {allowed}\n"
              "environments:\n  dev: {path: dev}\n  prod: {path: prod}\n")
    work = init_repo(tmp_path / "work")
    signed = ["-S"]
    first = commit(work, {"conveyor.yaml": config, "dev/cm.yaml": CM.format(name="d", v=1),
                          "prod/cm.yaml": CM.format(name="p", v=1)}, "first", args=signed,
                   env=ssh_env(trusted))
    async with watching(bus, nats_server, str(work), tmp_path / "data") as watcher:
        await wait_for_events(bus, lambda evs: len(of(evs, first)) == 2)
        unsigned = commit(work, {"dev/cm.yaml": CM.format(name="d", v=2)}, "unsigned")
        foreign = commit(work, {"prod/cm.yaml": CM.format(name="p", v=2)}, "stranger",
                         args=signed, env=ssh_env(stranger))
        # an unsigned commit that tries to switch verification off
        sneaky = commit(work, {"conveyor.yaml": config[config.index("environments:"):]},
                        "drop verify")
        after_sneaky = commit(work, {"dev/cm.yaml": CM.format(name="d", v=3)}, "unsigned 2")
        good = commit(work, {"dev/cm.yaml": CM.format(name="d", v=4)}, "signed", args=signed,
                      env=ssh_env(trusted))
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: bool(of(evs, good)))
    assert of(events, first) == [(ev.COMMIT_DETECTED, "dev"), (ev.COMMIT_DETECTED, "prod")]
    signature = next(e for e in events if e.correlationid == first
                     and e.type == ev.COMMIT_DETECTED).data["signature"]
    assert (signature["ok"], signature["signer"], signature["format"]) == (True, SIGNER, "ssh")
    assert of(events, unsigned) == [(ev.COMMIT_REJECTED, "dev")]
    rejected = next(e for e in events if e.correlationid == unsigned)
    assert rejected.data["reason"] == "Unsigned" and "rejected" in rejected.data["error"]
    assert of(events, foreign) == [(ev.COMMIT_REJECTED, "prod")]
    assert next(e for e in events if e.correlationid == foreign).data["reason"] == \
        "UnknownSigner"
    assert of(events, sneaky) == [(ev.COMMIT_REJECTED, "dev"), (ev.COMMIT_REJECTED, "prod")]
    assert not [e for e in events if e.correlationid == sneaky
                and e.type == ev.CONFIG_LOADED]  # the config did not change
    assert of(events, after_sneaky) == [(ev.COMMIT_REJECTED, "dev")]  # still verified
    assert of(events, good) == [(ev.COMMIT_DETECTED, "dev")]


# --------------------------------------------------------------------------- OpenPGP


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg missing (apt-get install -y gnupg)")
    home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))  # short path: agent socket
    env = {"GNUPGHOME": str(home)}

    def gpg(*args: str) -> str:
        proc = subprocess.run(["gpg", "--batch", "--passphrase", "", *args], env=env,
                              capture_output=True, check=True)
        return proc.stdout.decode()

    try:
        gpg("--quick-gen-key", f"Release <{SIGNER}>", "ed25519", "sign", "1d")
        fpr = next(line.split(":")[9] for line in gpg("--with-colons", "--list-secret-keys")
                   .splitlines() if line.startswith("fpr:"))
        keyring = tmp_path / "trusted.asc"
        keyring.write_text(gpg("--armor", "--export", fpr))
        yield {"home": str(home), "keyring": str(keyring), "fpr": fpr}
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


async def test_gpg_verified_source_over_git_daemon(gnupg: dict[str, str],
                                                   nats_server: EmbeddedNats, bus: EventBus,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUST_DIR", str(Path(gnupg["keyring"]).parent))
    env = {"GNUPGHOME": gnupg["home"], "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "user.signingkey", "GIT_CONFIG_VALUE_0": gnupg["fpr"]}
    apps = Upstream(tmp_path / "srv", "apps")
    first = apps.push({"web/cm.yaml": CM.format(name="w", v=1)}, "signed", args=["-S"],
                      env=env)
    async with GitDaemon(apps.root) as daemon:
        primary = Repo(tmp_path / "config")
        primary.commit({"conveyor.yaml": (
            f"sources:\n  apps:\n    url: {daemon.url('apps.git')}\n    branch: main\n"
            "    verify:\n      mode: gpg\n      keyring: ${TRUST_DIR}/trusted.asc\n"
            "environments:\n  web: {path: web, source: apps}\n")})
        async with watching(bus, nats_server, str(primary.path), tmp_path / "data") as w:
            await wait_for_events(bus, lambda evs: bool(of(evs, first)))
            unsigned = apps.push({"web/cm.yaml": CM.format(name="w", v=2)}, "unsigned")
            await w.poll("apps")
            events = await wait_for_events(bus, lambda evs: bool(of(evs, unsigned)))
            signed = apps.push({"web/cm.yaml": CM.format(name="w", v=3)}, "signed 2",
                               args=["-S"], env=env)
            await w.poll("apps")
            events = await wait_for_events(bus, lambda evs: bool(of(evs, signed)))
    assert of(events, first) == [(ev.COMMIT_DETECTED, "web")]
    detected = next(e for e in events if e.correlationid == first
                    and e.type == ev.COMMIT_DETECTED)
    assert detected.data["signature"]["key"] == gnupg["fpr"]
    assert of(events, unsigned) == [(ev.COMMIT_REJECTED, "web")]
    assert of(events, signed) == [(ev.COMMIT_DETECTED, "web")]
