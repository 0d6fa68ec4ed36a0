"""The git target on remote repositories: fetch, commit on top, push without force.

Real servers only (``git daemon --enable=receive-pack``, ``git http-backend`` behind basic
auth); what reached the remote is read from the served bare repository with the git CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.errors import PermanentError, TransientError
from orchestrator.ports import ApplyRequest
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from orchestrator.targets.git.push import PushMirror, target_credentials
from orchestrator.targets.git.target import GitTarget, RemoteGitTarget, git_target_for
from services.git_watcher.service import GitWatcher
from tests.support.conveyors import running
from tests.support.gitservers import (
    GitDaemon,
    GitHttpServer,
    SshServer,
    Upstream,
    closed_port_url,
    git,
    ssh_keygen,
    sshd_available,
)
from tests.support.waits import wait_for_events

PASSWORD = "pa55-Push-Secret-Value"
WRONG = "wr0ng-Push-Secret-Value"
BRANCH = "deploy/dev"


def configmap(name: str, value: str, namespace: str = "dev") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": {"k": value}}


def request(value: str, *, seq: int = 1, revision: str = "a" * 40) -> ApplyRequest:
    return ApplyRequest(env="dev", revision=revision, digest=f"sha256:{value}",
                        objects=[configmap("app", value)], origin_seq=seq, message="change")


def remote_log(bare: Path, branch: str = BRANCH) -> list[str]:
    """``<sha> <parents>`` of every commit on ``branch`` of the served repository, newest
    first."""
    return git(bare, "log", "--format=%H %P", branch).splitlines()


def remote_file(bare: Path, path: str, branch: str = BRANCH) -> str:
    return git(bare, "show", f"{branch}:{path}")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv")
    up.push({"conveyor.yaml": "environments: {}\n"}, "first")
    return up


def target(url: str, data: Path, **kwargs: Any) -> RemoteGitTarget:
    return RemoteGitTarget(PushMirror(url, BRANCH, data, **kwargs))


# --------------------------------------------------------------------------- git://


async def test_first_push_creates_the_branch_and_the_remote_is_what_counts(
        upstream: Upstream, tmp_path: Path) -> None:
    main = git(upstream.bare, "rev-parse", "main")
    async with GitDaemon(upstream.root, receive_pack=True) as daemon:
        url = daemon.url(upstream.name)
        first = target(url, tmp_path / "data")
        assert (await first.current()).digest is None  # no branch yet
        result = await first.apply(request("one", seq=5))
        assert result.changed and result.details["parent"] is None
        assert first.mirror.path.parent == tmp_path / "data" / "targets"

        # another process (its own data dir) reads the remote: it holds the bundle
        other = target(url, tmp_path / "other-data")
        held = await other.current()
        assert (held.digest, held.origin_seq, held.revision) == ("sha256:one", 5, "a" * 40)
        again = await other.apply(request("one", seq=5))
        assert not again.changed and again.details["commit"] == result.details["commit"]

    [only] = remote_log(upstream.bare)
    assert only == result.details["commit"]  # a root commit: no parent
    assert "k: one" in remote_file(upstream.bare, "dev/configmap-app.yaml")
    message = git(upstream.bare, "log", "-1", "--format=%an <%ae>%n%B", BRANCH)
    assert message.startswith("Conveyor <conveyor@localhost>")
    assert "Conveyor-Digest: sha256:one" in message and "Conveyor-Seq: 5" in message
    assert git(upstream.bare, "rev-parse", "main") == main  # the source branch is untouched


async def test_someone_else_pushed_meanwhile_commit_goes_on_top_of_theirs(
        upstream: Upstream, tmp_path: Path) -> None:
    async with GitDaemon(upstream.root, receive_pack=True) as daemon:
        url = daemon.url(upstream.name)
        await target(url, tmp_path / "data").apply(request("one"))
        ours = target(url, tmp_path / "data")
        assert (await ours.current()).digest == "sha256:one"  # our view, about to be stale
        theirs = upstream.push({"hotfix.txt": "by hand\n"}, "hotfix", branch=BRANCH)
        result = await ours.apply(request("two", seq=2))
    assert result.changed and result.details["attempts"] == 2  # rejected once, re-fetched
    assert result.details["parent"] == theirs
    head, parent = remote_log(upstream.bare)[0].split()
    assert (head, parent) == (result.details["commit"], theirs)
    # the rendered tree replaces the branch's content: no rebase, no merge of their files
    files = git(upstream.bare, "ls-tree", "-r", "--name-only", BRANCH).splitlines()
    assert files == ["dev/configmap-app.yaml"]


async def test_a_rejection_without_movement_is_permanent(upstream: Upstream,
                                                         tmp_path: Path) -> None:
    """A server hook (a protected branch) refuses the update: retrying cannot help."""
    hook = upstream.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'deploy branches are protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    async with GitDaemon(upstream.root, receive_pack=True) as daemon:
        with pytest.raises(PermanentError) as info:
            await target(daemon.url(upstream.name), tmp_path / "data").apply(request("one"))
    assert info.value.reason == "PushRejected"
    assert "did not move" in str(info.value)
    with pytest.raises(RuntimeError):
        remote_log(upstream.bare)


async def test_a_branch_that_keeps_moving_is_transient(upstream: Upstream,
                                                       tmp_path: Path) -> None:
    """Bounded retries inside the target; then the applier's backoff takes over."""
    async with GitDaemon(upstream.root, receive_pack=True) as daemon:
        url = daemon.url(upstream.name)
        await target(url, tmp_path / "data").apply(request("one"))
        busy = target(url, tmp_path / "data", max_attempts=1)
        await busy.current()
        upstream.push({"other.txt": "x\n"}, "someone", branch=BRANCH)
        with pytest.raises(TransientError) as info:
            await busy.apply(request("two", seq=2))
    assert info.value.reason == "TargetMoved"


async def test_author_is_configurable_and_local_paths_stay_local(upstream: Upstream,
                                                                 tmp_path: Path) -> None:
    async with GitDaemon(upstream.root, receive_pack=True) as daemon:
        remote = git_target_for("dev", {"author": {"name": "Deploy Bot",
                                                   "email": "bot@example.org"}},
                                {"repo": daemon.url(upstream.name)}, data_dir=tmp_path)
        assert isinstance(remote, RemoteGitTarget)
        await remote.apply(request("one"))
    assert git(upstream.bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH) == \
        "Deploy Bot <bot@example.org>|Deploy Bot <bot@example.org>"
    local = git_target_for("dev", {}, {"repo": str(upstream.bare)}, data_dir=tmp_path)
    assert isinstance(local, GitTarget)
    with pytest.raises(PermanentError) as info:
        git_target_for("dev", {"author": {"name": "<bad>"}}, {"repo": "git://h/r.git"},
                       data_dir=tmp_path)
    assert info.value.reason == "InvalidTarget"


async def test_unreachable_remote_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError) as info:
        await target(closed_port_url("git"), tmp_path / "data").current()
    assert info.value.reason == "Unreachable" and "git target deploy/dev" in str(info.value)


# --------------------------------------------------------------------------- smart HTTP


async def test_http_push_with_basic_auth_and_wrong_password(
        upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    GitHttpServer.enable_push(upstream.bare)
    creds = {"username": "deploy", "password": "${TARGET_PASSWORD}"}
    async with GitHttpServer(upstream.root, users={"deploy": PASSWORD}) as http:
        monkeypatch.setenv("TARGET_PASSWORD", PASSWORD)
        url = http.url(upstream.name)
        allowed = SecretPolicy(env_allow=("TARGET_*",))
        result = await target(url, tmp_path / "data", credentials=creds,
                              scope=allowed.scope()).apply(request("one"))
        assert result.changed
        monkeypatch.setenv("TARGET_PASSWORD", WRONG)
        with pytest.raises(PermanentError) as info:
            await target(url, tmp_path / "data", credentials=creds,
                         scope=allowed.scope()).current()
    assert info.value.reason == "AuthenticationFailed"
    assert "target.git.credentials" in str(info.value) and WRONG not in str(info.value)
    assert "deploy" in http.remote_users
    assert "k: one" in remote_file(upstream.bare, "dev/configmap-app.yaml")


# --------------------------------------------------------------------------- SSH


@pytest.mark.skipif(sshd_available() is not None, reason=sshd_available() or "")
async def test_ssh_push_with_strict_known_hosts(upstream: Upstream, tmp_path: Path) -> None:
    key = ssh_keygen(tmp_path / "id_deploy")
    async with SshServer([key.with_suffix(".pub").read_text()],
                         workdir=tmp_path / "sshd") as sshd:
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts_line + "\n")
        creds = {"sshKeyFile": str(key), "knownHostsFile": str(known)}
        scope = SecretPolicy(secrets_dirs=(str(tmp_path),)).scope()  # the operator's dir
        result = await target(sshd.url(upstream.bare), tmp_path / "data",
                              credentials=creds, scope=scope).apply(request("one"))
        assert result.changed
        known.write_text("")  # an unknown host key is refused, before any push
        with pytest.raises(PermanentError) as info:
            await target(sshd.url(upstream.bare), tmp_path / "data",
                         credentials=creds, scope=scope).apply(request("two"))
    assert info.value.reason == "HostKeyUnknown"
    assert remote_log(upstream.bare) == [result.details["commit"]]  # a root commit


def test_credentials_are_the_sources_unless_the_target_names_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_GIT_TOKEN", "t")
    primary = {"repo": "https://git.example/org/config.git", "source": "default"}
    env_creds = {"token": "${CONVEYOR_GIT_TOKEN}"}
    assert target_credentials({}, "https://git.example/org/config", primary) == env_creds
    own = {"credentials": {"password": "${PUSH_PW}", "username": "bot"}}
    assert target_credentials(own, primary["repo"], primary) == own["credentials"]
    infra = "git://infra.example/infra.git"
    secondary = {"repo": infra, "source": "infra",
                 "source_config": {"credentials": {"password": "${INFRA_PW}"}}}
    assert target_credentials({}, infra, secondary) == {"password": "${INFRA_PW}"}
    # another host never gets the primary's (or a source's) secrets
    assert target_credentials({}, "https://elsewhere.example/x.git", primary) == {}
    assert target_credentials({}, "https://git.example/org/config.git",
                              {"repo": "git://infra.example/infra.git", "source": "infra"},
                              primary_repo="https://git.example/org/config") == env_creds
    with pytest.raises(PermanentError):
        target_credentials({"credentials": "${X}"}, primary["repo"], primary)


# --------------------------------------------------------------------------- the pipeline


def settings_for(repo: str, nats: EmbeddedNats, data: Path) -> Settings:
    return Settings(nats_url=nats.url, data_dir=data, repo=repo, branch="main",
                    listen="127.0.0.1:0", interval=3600.0)  # polls only when triggered


def finished(sha: str, envs: set[str]) -> Callable[[list[Event]], bool]:
    done = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}

    def check(events: list[Event]) -> bool:
        return {e.subject for e in events if e.correlationid == sha and e.type in done} >= envs

    return check


def outcome(events: list[Event], sha: str, env: str) -> Event:
    return [e for e in events if e.correlationid == sha and e.subject == env][-1]


async def trigger(conveyor: Conveyor) -> None:
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    await watcher.poll()


async def test_pipeline_pushes_to_the_remote_and_skips_an_unchanged_render(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    up = Upstream(tmp_path / "srv", "config")
    first = up.push(demo_files(), "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon, \
            running(settings_for(daemon.url("config.git"), nats_server,
                                 tmp_path / "data")) as conveyor:
        events = await wait_for_events(bus, finished(first, {"dev", "prod"}))
        for env in ("dev", "prod"):
            done = outcome(events, first, env)
            assert done.type == ev.APPLY_SUCCEEDED, done.data
            assert done.data["target"] == f"git deploy/{env} of {daemon.url('config.git')}"
        comment = up.push({"conveyor.yaml": demo_files()["conveyor.yaml"] + "# reviewed\n"},
                          "comment only")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(comment, {"dev", "prod"}))
    assert outcome(events, comment, "dev").type == ev.APPLY_SKIPPED
    assert outcome(events, comment, "prod").type == ev.APPLY_SKIPPED
    for env in ("dev", "prod"):
        assert len(remote_log(up.bare, f"deploy/{env}")) == 1
        message = git(up.bare, "log", "-1", "--format=%B", f"deploy/{env}")
        assert f"Conveyor-Source-Commit: {first}" in message
    assert "nginx:1.27" in remote_file(up.bare, "dev/deployment.apps-web.yaml")
    assert git(up.bare, "rev-parse", "main") == comment  # the source branch is untouched


async def test_pipeline_commits_on_top_of_a_push_by_someone_else(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    up = Upstream(tmp_path / "srv", "config")
    first = up.push(demo_files(), "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon, \
            running(settings_for(daemon.url("config.git"), nats_server,
                                 tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        git(up.work, "fetch", "-q", str(up.bare), "deploy/dev")
        git(up.work, "checkout", "-q", "-B", "deploy/dev", "FETCH_HEAD")
        hotfix = up.push({"dev/hotfix.yaml": "by: hand\n"}, "hotfix by hand", branch="deploy/dev")
        git(up.work, "checkout", "-q", "main")
        bump = up.push({"envs/dev/kustomization.yaml":
                        demo_files(dev_replicas=4)["envs/dev/kustomization.yaml"]}, "bump dev")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(bump, {"dev"}))
    done = outcome(events, bump, "dev")
    assert done.type == ev.APPLY_SUCCEEDED and done.data["parent"] == hotfix
    head, parent = remote_log(up.bare)[0].split()
    assert (head, parent) == (done.data["commit"], hotfix)
    assert len(remote_log(up.bare)) == 3
    assert "replicas: 4" in remote_file(up.bare, "dev/deployment.apps-web.yaml")


async def test_pipeline_over_http_uses_the_sources_credentials(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_GIT_USERNAME", "deploy")
    monkeypatch.setenv("CONVEYOR_GIT_PASSWORD", PASSWORD)
    up = Upstream(tmp_path / "srv", "config")
    GitHttpServer.enable_push(up.bare)
    first = up.push(demo_files(), "initial")
    async with GitHttpServer(up.root, users={"deploy": PASSWORD}) as http, \
            running(settings_for(http.url("config.git"), nats_server, tmp_path / "data")):
        events = await wait_for_events(bus, finished(first, {"dev", "prod"}))
    assert outcome(events, first, "dev").type == ev.APPLY_SUCCEEDED
    assert outcome(events, first, "prod").type == ev.APPLY_SUCCEEDED
    assert "nginx:1.27" in remote_file(up.bare, "prod/deployment.apps-web.yaml", "deploy/prod")
    assert set(http.remote_users) == {"deploy"}
    assert not any(PASSWORD in e.to_json().decode() for e in events)


async def test_pipeline_wrong_push_credentials_fail_clearly_without_the_secret(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A public repository (anonymous reads) whose pushes need a password: a wrong one."""
    monkeypatch.setenv("CONVEYOR_GIT_USERNAME", "deploy")
    monkeypatch.setenv("CONVEYOR_GIT_PASSWORD", WRONG)
    up = Upstream(tmp_path / "srv", "config")
    GitHttpServer.enable_push(up.bare)
    first = up.push(demo_files(), "initial")
    async with GitHttpServer(up.root, users={"deploy": PASSWORD},
                             anonymous_read=True) as http, \
            running(settings_for(http.url("config.git"), nats_server, tmp_path / "data")):
        events = await wait_for_events(bus, finished(first, {"dev", "prod"}))
    failed = outcome(events, first, "dev")
    assert failed.type == ev.APPLY_FAILED
    assert failed.data["reason"] == "AuthenticationFailed"
    assert "git target deploy/dev of http://127.0.0.1" in failed.data["error"]
    assert "refused the password for user 'deploy'" in failed.data["error"]
    assert not any(WRONG in e.to_json().decode() or PASSWORD in e.to_json().decode()
                   for e in events)
    with pytest.raises(RuntimeError):
        remote_log(up.bare)  # nothing was pushed
