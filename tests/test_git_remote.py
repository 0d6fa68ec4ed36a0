"""GitMirror against real repositories and real servers: local paths, file://, git://, HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pygit2
import pytest

from orchestrator.adapters.git_callbacks import set_timeouts
from orchestrator.adapters.git_credentials import load_credentials
from orchestrator.adapters.git_mirror import GitMirror
from orchestrator.domain.config import SourceConfig
from orchestrator.errors import PermanentError, TransientError
from orchestrator.secrets import SecretPolicy
from orchestrator.targets.git.push import PushMirror
from tests.support.gitservers import (
    GitDaemon,
    GitHttpServer,
    Upstream,
    closed_port_url,
    self_signed_tls,
)

PASSWORD = "pa55-Very-Secret-Value"
TOKEN = "ghp_TotallySecretTokenValue123"


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv")
    up.push({"conveyor.yaml": "environments: {}\n"}, "first")
    return up


# --------------------------------------------------------------------------- local and file://


async def test_local_path_is_opened_in_place(upstream: Upstream, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mirror = GitMirror(str(upstream.bare), cache)
    first = await mirror.fetch("main")
    assert first.head == pygit2.Repository(str(upstream.bare)).head.target.__str__()
    assert mirror.path == upstream.bare.resolve()
    assert not cache.exists()  # no copy made
    second = upstream.push({"a.txt": "a"})
    result = await mirror.fetch("main")
    assert (result.head, result.previous, result.changed) == (second, first.head, True)


async def test_file_url_fetch_follows_updates_rewrites_and_deletions(
        upstream: Upstream, tmp_path: Path) -> None:
    mirror = GitMirror(f"file://{upstream.bare}", tmp_path / "cache")
    first = await mirror.fetch("main")
    assert first.head is not None and first.previous is None
    assert mirror.path.parent == tmp_path / "cache"

    second = upstream.push({"a.txt": "a"})
    result = await mirror.fetch("main")
    assert (result.head, result.previous) == (second, first.head)
    assert not await mirror.is_rewrite(first.head, second)
    assert await mirror.descendant_of(second, first.head)

    rewritten = upstream.rewrite({"b.txt": "b"})
    result = await mirror.fetch("main")
    assert result.head == rewritten
    assert await mirror.is_rewrite(second, rewritten)
    assert not await mirror.is_rewrite(None, rewritten)
    assert not await mirror.is_rewrite(rewritten, rewritten)

    upstream.push({"c.txt": "c"}, branch="feature")
    assert (await mirror.fetch("feature")).head is not None
    upstream.delete("feature")
    gone = await mirror.fetch("feature")
    assert gone.head is None and gone.previous is not None


async def test_fetch_without_branch_mirrors_all_and_follows_remote_head(
        upstream: Upstream, tmp_path: Path) -> None:
    other = upstream.push({"x": "1"}, branch="other")
    mirror = GitMirror(f"file://{upstream.bare}", tmp_path / "cache")
    result = await mirror.fetch()
    assert result.branch == "main"
    repo = pygit2.Repository(str(mirror.path))
    assert str(repo.head.target) == result.head
    assert str(repo.references["refs/heads/other"].target) == other


async def test_ensure_commit_fetches_a_commit_from_another_branch(
        upstream: Upstream, tmp_path: Path) -> None:
    mirror = GitMirror(f"file://{upstream.bare}", tmp_path / "cache")
    await mirror.fetch("main")
    elsewhere = upstream.push({"f": "1"}, branch="elsewhere")
    await mirror.ensure_commit(elsewhere)
    assert pygit2.Repository(str(mirror.path)).get(elsewhere) is not None
    with pytest.raises(PermanentError) as info:
        await mirror.ensure_commit("1" * 40)
    assert info.value.reason == "CommitNotFound"


async def test_is_rewrite_when_old_commit_was_never_seen(upstream: Upstream,
                                                         tmp_path: Path) -> None:
    """A revision from another replica's state, rewritten away before this mirror existed."""
    old = upstream.push({"a": "1"})
    new = upstream.rewrite({"b": "2"})
    mirror = GitMirror(f"file://{upstream.bare}", tmp_path / "cache")
    await mirror.fetch("main")
    assert await mirror.is_rewrite(old, new)


async def test_concurrent_fetches_of_one_mirror_are_serialised(upstream: Upstream,
                                                              tmp_path: Path) -> None:
    mirror = GitMirror(f"file://{upstream.bare}", tmp_path / "cache")
    results = await asyncio.gather(*(mirror.fetch("main") for _ in range(5)))
    assert len({r.head for r in results}) == 1


async def test_missing_local_repository_is_permanent(tmp_path: Path) -> None:
    mirror = GitMirror(str(tmp_path / "nowhere"), tmp_path / "cache")
    with pytest.raises(PermanentError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "RepositoryNotFound"


# --------------------------------------------------------------------------- git://


async def test_git_daemon_fetch(upstream: Upstream, tmp_path: Path) -> None:
    async with GitDaemon(upstream.root) as daemon:
        mirror = GitMirror(daemon.url(upstream.name), tmp_path / "cache")
        first = await mirror.fetch("main")
        second = upstream.push({"a": "1"})
        result = await mirror.fetch("main")
        default = await mirror.fetch()
    assert first.head is not None
    assert (result.head, result.previous) == (second, first.head)
    assert (default.branch, default.head) == ("main", second)


async def test_git_daemon_missing_repository_is_permanent(upstream: Upstream,
                                                          tmp_path: Path) -> None:
    async with GitDaemon(upstream.root) as daemon:
        mirror = GitMirror(daemon.url("nope.git"), tmp_path / "cache")
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
    assert info.value.reason == "RepositoryNotFound"


# --------------------------------------------------------------------------- smart HTTP


async def test_http_basic_auth_with_password_from_env(upstream: Upstream,
                                                      tmp_path: Path) -> None:
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"username": "deploy", "password": "${GIT_PASSWORD}"},
                           environ={"GIT_PASSWORD": PASSWORD})
        result = await mirror.fetch("main")
        default = await mirror.fetch()
    assert result.head is not None
    assert (default.branch, default.head) == ("main", result.head)
    assert "deploy" in server.remote_users


async def test_http_wrong_password_is_authentication_failed_without_the_secret(
        upstream: Upstream, tmp_path: Path) -> None:
    wrong = "wr0ng-Secret-Password"
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"username": "deploy", "password": "${GIT_PASSWORD}"},
                           environ={"GIT_PASSWORD": wrong})
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
    assert info.value.reason == "AuthenticationFailed"
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert "refused the password for user 'deploy'" in str(info.value)
    assert server.requests <= 3  # offered once, not replayed in a loop


async def test_http_without_credentials_is_authentication_failed(upstream: Upstream,
                                                                 tmp_path: Path) -> None:
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache")
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
    assert info.value.reason == "AuthenticationFailed"


async def test_http_token_from_file_as_basic_x_access_token(upstream: Upstream,
                                                            tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # secret mounts often end with a newline
    async with GitHttpServer(upstream.root, tokens=[TOKEN]) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"tokenFile": str(token_file)},
                           scope=SecretPolicy(secrets_dirs=(str(tmp_path),)).scope())
        result = await mirror.fetch("main")
    assert result.head is not None
    assert server.remote_users[-1] == "x-access-token"


async def test_http_bearer_token(upstream: Upstream, tmp_path: Path) -> None:
    async with GitHttpServer(upstream.root, tokens=[TOKEN]) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"token": "${TOKEN}", "tokenAuth": "bearer"},
                           environ={"TOKEN": TOKEN})
        result = await mirror.fetch("main")
    assert result.head is not None
    assert server.remote_users[-1] == "bearer"


async def test_http_wrong_bearer_token_never_leaks(upstream: Upstream, tmp_path: Path) -> None:
    async with GitHttpServer(upstream.root, tokens=[TOKEN]) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"token": "${TOKEN}", "tokenAuth": "bearer"},
                           environ={"TOKEN": "not-the-" + TOKEN})
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
    assert info.value.reason == "AuthenticationFailed"
    assert TOKEN not in str(info.value)


async def test_from_source_config(upstream: Upstream, tmp_path: Path) -> None:
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}) as server:
        source = SourceConfig(
            name="apps", url="${GIT_BASE}/" + upstream.name, branch="main",
            raw={"credentials": {"username": "deploy", "passwordFile": "${PWFILE}"}})
        (tmp_path / "pw").write_text(PASSWORD)
        mirror = GitMirror.from_source(source, tmp_path / "cache", environ={
            "GIT_BASE": server.url("").rstrip("/"), "PWFILE": str(tmp_path / "pw")})
        assert (await mirror.fetch(source.branch)).head is not None


async def test_https_with_untrusted_certificate_is_refused(upstream: Upstream,
                                                           tmp_path: Path) -> None:
    tls, _cert = self_signed_tls(tmp_path)
    async with GitHttpServer(upstream.root, tls=tls) as server:
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache")
        with pytest.raises(PermanentError) as info:
            await mirror.fetch("main")
    assert info.value.reason == "CertificateInvalid"


async def test_https_with_trusted_certificate_and_password(upstream: Upstream,
                                                           tmp_path: Path) -> None:
    """libgit2 trusts CAs process-wide (added, never removed): this adds a throwaway CA for
    127.0.0.1 only, which no other test's server uses."""
    tls, cert = self_signed_tls(tmp_path)
    pygit2.settings.set_ssl_cert_locations(str(cert), None)
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}, tls=tls) as server:
        assert server.url("x").startswith("https://")
        mirror = GitMirror(server.url(upstream.name), tmp_path / "cache",
                           credentials={"username": "deploy", "password": "${P}"},
                           environ={"P": PASSWORD})
        assert (await mirror.fetch("main")).head is not None


# --------------------------------------------------------------------------- unreachable


@pytest.mark.parametrize("scheme", ["http", "git", "ssh"])
async def test_closed_port_is_transient_unreachable(scheme: str, tmp_path: Path) -> None:
    mirror = GitMirror(closed_port_url(scheme), tmp_path / "cache",
                       credentials={"knownHosts": "[127.0.0.1]:1 ssh-ed25519 AAAA"})
    with pytest.raises(TransientError) as info:
        await mirror.fetch("main")
    assert info.value.reason == "Unreachable"
    assert "127.0.0.1" in str(info.value)


async def test_silent_server_times_out_as_unreachable(tmp_path: Path) -> None:
    """A server that accepts and never answers: the fetch ends by the configured timeout
    (libgit2's, one per process: set here as the composition root sets it, then restored)."""
    accepted = asyncio.Event()
    writers = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        accepted.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        set_timeouts(connect_timeout=1.0, timeout=1.0)
        mirror = GitMirror(f"http://127.0.0.1:{port}/repo.git", tmp_path / "cache")
        with pytest.raises(TransientError) as info:
            await asyncio.wait_for(mirror.fetch("main"), 30)
        assert accepted.is_set()
        assert info.value.reason == "Unreachable"
    finally:
        set_timeouts()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- configuration


def test_literal_secrets_are_refused() -> None:
    with pytest.raises(PermanentError) as info:
        load_credentials({"password": "hunter2-literal"}, source="apps")
    assert info.value.reason == "InvalidCredentials"
    assert "hunter2-literal" not in str(info.value)
    assert "passwordFile" in str(info.value)


def test_url_with_embedded_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        GitMirror("https://me:s3cr3t-in-url@example.com/org/repo.git", tmp_path)
    assert "s3cr3t-in-url" not in str(info.value)
    assert info.value.reason == "InvalidSource"


def test_credentials_repr_hides_secrets() -> None:
    creds = load_credentials({"token": "${T}", "sshPassphrase": "${P}"},
                             environ={"T": TOKEN, "P": "phrase-XYZ"})
    assert creds.username == "x-access-token" and creds.password == TOKEN
    assert TOKEN not in repr(creds) and "phrase-XYZ" not in repr(creds)


def test_unset_variable_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        GitMirror("https://example.com/r.git", tmp_path, credentials={"token": "${NOPE_X}"},
                  environ={})
    assert "NOPE_X" in str(info.value)


def test_unknown_credentials_key_is_refused() -> None:
    with pytest.raises(PermanentError, match="unknown credentials key"):
        load_credentials({"pasword": "${X}"})


def test_a_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        GitMirror(f"https://deploy:{PASSWORD}@git.example/apps.git", tmp_path / "cache",
                  source="apps")
    assert info.value.reason == "InvalidSource" and PASSWORD not in str(info.value)
    assert "move it to credentials.password or credentials.token" in str(info.value)
    with pytest.raises(PermanentError) as target:
        PushMirror(f"https://deploy:{PASSWORD}@git.example/deploy.git", "deploy/dev", tmp_path)
    assert target.value.reason == "InvalidTarget" and PASSWORD not in str(target.value)
    assert "move it to target.git.credentials" in str(target.value)
