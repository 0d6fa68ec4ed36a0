"""GitMirror over SSH against a real OpenSSH sshd: keys, passphrases, strict known_hosts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from orchestrator.adapters.git_mirror import GitMirror
from orchestrator.errors import PermanentError
from orchestrator.secrets import SecretPolicy
from tests.support.gitservers import SshServer, Upstream, ssh_keygen, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None,
                                reason=sshd_available() or "sshd available")

PASSPHRASE = "correct-horse-Battery-staple"


def mirror_in(tmp: Path, url: str, cache: Path, **kwargs: Any) -> GitMirror:
    """A mirror whose key files live under the test's dir (the operator's --secrets-dir) and
    whose ``environ`` names are the ones the operator allows (--env-allow)."""
    environ = kwargs.pop("environ", {})
    policy = SecretPolicy(env_allow=tuple(environ), secrets_dirs=(str(tmp),))
    return GitMirror(url, cache, scope=policy.scope(environ), **kwargs)



@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return {
        "plain": ssh_keygen(tmp_path / "id_plain"),
        "protected": ssh_keygen(tmp_path / "id_protected", passphrase=PASSPHRASE),
        "stranger": ssh_keygen(tmp_path / "id_stranger"),
    }


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv")
    up.push({"conveyor.yaml": "environments: {}\n"}, "first")
    return up


@pytest.fixture
async def sshd(keys: dict[str, Path], tmp_path: Path) -> AsyncIterator[SshServer]:
    authorized = [(keys[k].with_suffix(".pub")).read_text() for k in ("plain", "protected")]
    async with SshServer(authorized, workdir=tmp_path / "sshd") as server:
        yield server


async def test_ssh_key_with_strict_known_hosts(sshd: SshServer, upstream: Upstream,
                                               keys: dict[str, Path], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line + "\n")
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKeyFile": str(keys["plain"]), "knownHostsFile": str(known)})
    first = await mirror.fetch("main")
    second = upstream.push({"a": "1"})
    result = await mirror.fetch("main")
    assert first.head is not None
    assert (result.head, result.previous) == (second, first.head)


async def test_ssh_key_from_env_with_passphrase(sshd: SshServer, upstream: Upstream,
                                                keys: dict[str, Path], tmp_path: Path) -> None:
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKey": "${SSH_KEY}", "sshPassphrase": "${SSH_PASSPHRASE}",
        "knownHosts": sshd.known_hosts_line,
    }, environ={"SSH_KEY": keys["protected"].read_text(), "SSH_PASSPHRASE": PASSPHRASE})
    assert (await mirror.fetch("main")).head is not None


async def test_ssh_key_file_with_passphrase_file(sshd: SshServer, upstream: Upstream,
                                                 keys: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKeyFile": str(keys["protected"]),
        "sshPassphraseFile": str(tmp_path / "passphrase"),
        "knownHosts": sshd.known_hosts_line,
    })
    assert (await mirror.fetch("main")).head is not None


async def test_ssh_wrong_passphrase_is_authentication_failed(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    wrong = "not-the-Passphrase-42"
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKeyFile": str(keys["protected"]), "sshPassphrase": "${P}",
        "knownHosts": sshd.known_hosts_line}, environ={"P": wrong})
    with pytest.raises(PermanentError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "AuthenticationFailed"
    assert wrong not in str(info.value)


async def test_ssh_unauthorised_key_is_authentication_failed(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKey": "${K}", "knownHosts": sshd.known_hosts_line},
        environ={"K": keys["stranger"].read_text()})
    with pytest.raises(PermanentError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "AuthenticationFailed"
    assert "OPENSSH PRIVATE KEY" not in str(info.value)


async def test_ssh_unknown_host_key_is_refused_before_authenticating(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    """known_hosts trusts another key for this host: the connection must not go on."""
    impostor = ssh_keygen(tmp_path / "impostor_host_key").with_suffix(".pub").read_text()
    kind, key = impostor.split()[:2]
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKeyFile": str(keys["plain"]),
        "knownHosts": f"[127.0.0.1]:{sshd.port} {kind} {key}\n"})
    with pytest.raises(PermanentError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "HostKeyUnknown"
    assert not (mirror.path / "refs" / "heads" / "main").exists()


async def test_ssh_host_missing_from_known_hosts_is_refused(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache", credentials={
        "sshKeyFile": str(keys["plain"]),
        "knownHosts": "[example.invalid]:22 " + sshd.host_public_key})
    with pytest.raises(PermanentError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "HostKeyUnknown"
    assert "knownHosts" in str(info.value)


async def test_ssh_without_known_hosts_uses_process_home_strictly(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    """No knownHosts configured: libgit2's home (here an empty one) decides, still strictly."""
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    before = pygit2.settings.homedir or str(Path.home())
    pygit2.settings.homedir = str(empty_home)
    try:
        mirror = mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / "cache",
                           credentials={"sshKeyFile": str(keys["plain"])})
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
        assert info.value.reason == "HostKeyUnknown"
        (empty_home / ".ssh").mkdir()
        (empty_home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line + "\n")
        assert (await mirror.fetch("main")).head is not None
    finally:
        pygit2.settings.homedir = before


async def test_ssh_user_from_credentials(sshd: SshServer, upstream: Upstream, keys: dict[str, Path],
                            tmp_path: Path) -> None:
    """The URL names no user: ``credentials.username`` is the SSH login."""
    url = sshd.url(upstream.bare).replace(f"{sshd.user}@", "")
    mirror = mirror_in(tmp_path, url, tmp_path / "cache", credentials={
        "username": sshd.user, "sshKeyFile": str(keys["plain"]),
        "knownHosts": sshd.known_hosts_line})
    assert (await mirror.fetch("main")).head is not None


async def test_concurrent_ssh_fetches_keep_their_own_known_hosts(
        sshd: SshServer, upstream: Upstream, keys: dict[str, Path], tmp_path: Path) -> None:
    """libgit2's home is process-wide: fetches running together must not see each other's."""
    trusting = [mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / f"ok{i}", credentials={
        "sshKeyFile": str(keys["plain"]), "knownHosts": sshd.known_hosts_line})
        for i in range(3)]
    impostor = ssh_keygen(tmp_path / "impostor").with_suffix(".pub").read_text().split()
    distrusting = [mirror_in(tmp_path, sshd.url(upstream.bare), tmp_path / f"no{i}", credentials={
        "sshKeyFile": str(keys["plain"]),
        "knownHosts": f"[127.0.0.1]:{sshd.port} {impostor[0]} {impostor[1]}"})
        for i in range(3)]
    results = await asyncio.gather(*(m.fetch("main") for m in trusting + distrusting),
                                   return_exceptions=True)
    good, bad = results[:3], results[3:]
    assert all(not isinstance(r, BaseException) and r.head for r in good), good
    assert all(isinstance(r, PermanentError) and r.reason == "HostKeyUnknown" for r in bad), bad
