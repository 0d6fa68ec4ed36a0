"""Releases written back to Git, against real servers: ``git daemon`` (push enabled) and
``git http-backend``, a real nats-server for the events. What reached the server is read from
the served bare repository with the git CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.errors import PermanentError, TransientError
from orchestrator.gitops import declaration as decl
from orchestrator.gitops.workflow import BranchProtected, GitOps
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api.app import ApiService
from tests.support.gitservers import GitDaemon, GitHttpServer, Upstream, git
from tests.support.waits import wait_for_events

PASSWORD = "ci-Push-Secret-Value"
CONFIG = """\
environments:
  dev:
    path: envs/dev
  prod:
    path: envs/prod
  chart:
    path: charts/web
    render: {helm: {valueFiles: [values-prod.yaml]}}
  plain:
    path: envs/plain
"""
DEV_KUSTOMIZATION = """\
# dev overlay
resources:
  - ../../base   # shared
images:
  - name: web
    newTag: "1.0.0"   # set by CI
"""
FILES = {
    "conveyor.yaml": CONFIG,
    "base/kustomization.yaml": "resources: [deploy.yaml]\n",
    "base/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
    "envs/dev/kustomization.yaml": DEV_KUSTOMIZATION,
    "envs/prod/kustomization.yaml": "resources:\n- ../../base\n",
    "charts/web/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    "charts/web/values.yaml": "image:\n  repository: web\n  tag: '0.1'\n",
    "charts/web/values-prod.yaml": "# prod values\nimage:\n  tag: '1.0'  # CI\nreplicas: 2\n",
    "envs/plain/deploy.yaml": "kind: Deployment\nspec:\n  containers:\n"
                              "  - name: web\n    image: web:1.0   # pinned\n",
}


def show(bare: Path, path: str, rev: str = "main") -> str:
    return git(bare, "show", f"{rev}:{path}")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv")
    up.push(FILES, "first")
    return up


@pytest.fixture
async def daemon(upstream: Upstream) -> AsyncIterator[GitDaemon]:
    async with GitDaemon(upstream.root, receive_pack=True) as d:
        yield d


def gitops(bus: EventBus, daemon: GitDaemon, upstream: Upstream, data: Path,
           **kwargs: object) -> GitOps:
    settings = Settings(nats_url="", data_dir=data, repo=daemon.url(upstream.name),
                        branch="main")
    return GitOps(Resources.around(bus, settings), environ={}, **kwargs)  # type: ignore[arg-type]


async def test_release_commits_the_kustomize_images_edit_with_a_trailer_and_an_event(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    before = git(upstream.bare, "rev-parse", "main")
    result = await gitops(bus, daemon, upstream, tmp_path / "data").release(
        "dev", ["web=registry.example/web:1.4.2"], message="Ship 1.4.2")
    assert result.changed and result.parent == before and result.attempts == 1
    assert git(upstream.bare, "rev-parse", "main") == result.commit
    assert git(upstream.bare, "rev-parse", "main^") == before  # on top, not forced
    text = show(upstream.bare, "envs/dev/kustomization.yaml")
    assert text + "\n" == DEV_KUSTOMIZATION.replace('newTag: "1.0.0"', 'newTag: "1.4.2"') + \
        "    newName: registry.example/web\n"
    message = git(upstream.bare, "log", "-1", "--format=%an%n%B", "main")
    assert message.splitlines()[:2] == ["Conveyor", "Ship 1.4.2"]
    assert "Conveyor-Release: web=registry.example/web:1.4.2" in message
    assert "Conveyor-Environment: dev" in message
    assert result.files == ("envs/dev/kustomization.yaml",)

    events = await wait_for_events(bus, lambda es: any(
        e.type == ev.RELEASE_COMMITTED for e in es))
    [event] = [e for e in events if e.type == ev.RELEASE_COMMITTED]
    assert event.subject == "dev" and event.correlationid == result.commit
    assert event.data["images"] == ["web=registry.example/web:1.4.2"]
    assert event.data["parent"] == before and event.data["via"] == "commit"

    # the same release again: the declaration already says so, no commit, no event
    again = await gitops(bus, daemon, upstream, tmp_path / "data").release(
        "dev", ["web=registry.example/web:1.4.2"])
    assert not again.changed and git(upstream.bare, "rev-parse", "main") == result.commit


async def test_helm_values_and_plain_image_fields(bus: EventBus, daemon: GitDaemon,
                                                  upstream: Upstream, tmp_path: Path) -> None:
    ops = gitops(bus, daemon, upstream, tmp_path / "data")
    helm = await ops.release("chart", [], ["image.tag=1.4.2", "replicas=3"])
    assert helm.files == ("charts/web/values-prod.yaml",)  # the environment's values file
    # a comment stays on its line (ruamel keeps its column, so a longer value pushes it)
    assert show(upstream.bare, "charts/web/values-prod.yaml") == \
        "# prod values\nimage:\n  tag: '1.4.2' # CI\nreplicas: 3"
    plain = await ops.release("plain", ["web=reg.example/web:2.0"])
    assert show(upstream.bare, "envs/plain/deploy.yaml").endswith(
        "    image: reg.example/web:2.0   # pinned")
    assert git(upstream.bare, "rev-parse", "main^") == helm.commit != plain.commit


async def test_bad_releases_are_refused_with_the_reason(bus: EventBus, daemon: GitDaemon,
                                                        upstream: Upstream,
                                                        tmp_path: Path) -> None:
    ops = gitops(bus, daemon, upstream, tmp_path / "data")
    with pytest.raises(PermanentError, match=r"no environment 'qa'.*known: chart, dev"):
        await ops.release("qa", ["web=web:1"])
    with pytest.raises(PermanentError, match="Kustomize overlay: --set"):
        await ops.release("dev", [], ["image.tag=1"])
    with pytest.raises(PermanentError, match="no reference to image 'api'"):
        await ops.release("plain", ["api=api:1"])
    with pytest.raises(PermanentError, match="a tag"):
        await ops.release("dev", ["web=web"])
    assert git(upstream.bare, "rev-list", "--count", "main") == "1"


RACE_HOOK = """#!/bin/sh
# a concurrent push: the first time Conveyor updates main, someone else's commit lands first
[ -f "$GIT_DIR/raced" ] && exit 0
touch "$GIT_DIR/raced"
git update-ref refs/heads/main "$(cat "$GIT_DIR/theirs")"
exit 0
"""


async def test_a_concurrent_push_is_fetched_and_the_edit_reapplied_on_it(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    """The server's ``update`` hook moves main between our fetch and our push: the push is
    rejected, Conveyor fetches their commit and edits again on top of it."""
    base = git(upstream.bare, "rev-parse", "main")
    theirs = upstream.push({"envs/dev/kustomization.yaml": DEV_KUSTOMIZATION + "namePrefix: dev-\n",
                            "README": "by hand\n"}, "theirs", branch="theirs")
    assert git(upstream.bare, "rev-parse", "theirs^") == base
    (upstream.bare / "theirs").write_text(theirs)
    hook = upstream.bare / "hooks" / "update"
    hook.write_text(RACE_HOOK)
    hook.chmod(0o755)

    result = await gitops(bus, daemon, upstream, tmp_path / "data").release(
        "dev", ["web=web:1.5.0"])
    assert (upstream.bare / "raced").exists()
    assert result.attempts == 2 and result.parent == theirs
    assert git(upstream.bare, "log", "--format=%H", "main").splitlines() == [
        result.commit, theirs, base]
    text = show(upstream.bare, "envs/dev/kustomization.yaml")
    assert 'newTag: "1.5.0"' in text and "namePrefix: dev-" in text  # theirs kept, ours on top
    assert show(upstream.bare, "README") == "by hand"


async def test_parallel_releases_from_separate_processes_all_land(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    """Four writers with their own mirrors push at once; every edit lands, linear history."""
    import asyncio

    envs = {"dev": "web=web:2.0.0", "prod": "web=web:2.0.1", "chart": "", "plain": "web=web:2.1"}

    async def one(i: int, env: str, image: str) -> object:
        ops = gitops(bus, daemon, upstream, tmp_path / f"data{i}")
        if env == "chart":
            return await ops.release(env, [], ["image.tag=2.2"])
        return await ops.release(env, [image])

    results = await asyncio.gather(*(one(i, e, img) for i, (e, img) in enumerate(envs.items())))
    assert [r.changed for r in results] == [True] * 4, results  # type: ignore[attr-defined]
    log = [line.split() for line in git(upstream.bare, "log", "--format=%H %P",
                                        "main").splitlines()]
    assert len(log) == 5 and all(len(parents) <= 1 for _, *parents in log)  # linear
    assert {r.commit for r in results} == {sha for sha, *_ in log[:4]}  # type: ignore[attr-defined]
    assert 'newTag: "2.0.0"' in show(upstream.bare, "envs/dev/kustomization.yaml")
    assert "newTag: 2.0.1" in show(upstream.bare, "envs/prod/kustomization.yaml")
    assert "tag: '2.2'" in show(upstream.bare, "charts/web/values-prod.yaml")
    assert "image: web:2.1" in show(upstream.bare, "envs/plain/deploy.yaml")


async def test_a_protected_branch_says_to_use_a_pull_request(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    hook = upstream.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'main is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(BranchProtected) as info:
        await gitops(bus, daemon, upstream, tmp_path / "data").release("dev", ["web=web:9"])
    assert "--via pull-request" in str(info.value)
    assert git(upstream.bare, "rev-list", "--count", "main") == "1"


async def test_api_route_requires_the_operator_token_and_releases(
        nats_server: EmbeddedNats, bus: EventBus, daemon: GitDaemon, upstream: Upstream,
        tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "api",
                        repo=daemon.url(upstream.name), branch="main", listen="127.0.0.1:0",
                        api_token="ops-token")
    api = ApiService(Resources.around(bus, settings))
    await api.start()
    url = f"{api.url}/api/v1/environments/dev/releases"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"images": ["web=web:3.0"]}) as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer ops-token"}
            async with http.post(url, json={"images": ["web=web:3.0"]}, headers=auth) as resp:
                body = await resp.json()
                assert resp.status == 201, body
            async with http.post(url, json={"images": ["web=web"]}, headers=auth) as resp:
                assert resp.status == 400 and "a tag" in (await resp.json())["error"]
            async with http.post(f"{api.url}/api/v1/environments/qa/releases",
                                 json={"images": ["web=web:1"]}, headers=auth) as resp:
                assert resp.status == 404
            for path in ("rollback", "promotions"):  # control endpoints too
                async with http.post(f"{api.url}/api/v1/environments/prod/{path}",
                                     json={"from": "dev"}) as resp:
                    assert resp.status == 401
    finally:
        await api.stop()
    assert body["commit"] == git(upstream.bare, "rev-parse", "main")
    assert 'newTag: "3.0"' in show(upstream.bare, "envs/dev/kustomization.yaml")
    events = await wait_for_events(bus, lambda es: any(
        e.type == ev.RELEASE_COMMITTED for e in es))
    assert [e.source for e in events if e.type == ev.RELEASE_COMMITTED] == ["conveyor/api"]


async def test_cli_release_locally_with_push_credentials(
        nats_server: EmbeddedNats, bus: EventBus, upstream: Upstream, tmp_path: Path) -> None:
    """The real command line, in its own process, pushing over smart HTTP with the
    credentials the operator gave it (``CONVEYOR_GIT_*``); the event goes to the log."""
    import asyncio
    import os
    import subprocess
    import sys

    GitHttpServer.enable_push(upstream.bare)
    async with GitHttpServer(upstream.root, users={"ci": PASSWORD}) as http:
        args = ["release", "dev", "--image", "web=web:4.0", "--repo", http.url(upstream.name),
                "--branch", "main", "--nats", nats_server.url, "--data-dir",
                str(tmp_path / "cli"), "-o", "json"]

        def run(password: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "CONVEYOR_GIT_USERNAME": "ci",
                   "CONVEYOR_GIT_PASSWORD": password}
            return subprocess.run([sys.executable, "-m", "conveyor", *args],
                                  capture_output=True, text=True, check=False, env=env,
                                  cwd=Path(__file__).parent.parent)

        refused = await asyncio.to_thread(run, "wr0ng-password")
        assert refused.returncode == 1 and "AuthenticationFailed" not in refused.stdout
        assert "credentials" in refused.stderr and "wr0ng-password" not in refused.stderr
        done = await asyncio.to_thread(run, PASSWORD)
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        assert body["commit"] == git(upstream.bare, "rev-parse", "main") and body["changed"]
        assert 'newTag: "4.0"' in show(upstream.bare, "envs/dev/kustomization.yaml")
        assert "ci" in http.remote_users
        events = await wait_for_events(bus, lambda es: any(
            e.type == ev.RELEASE_COMMITTED for e in es))
        assert [e.correlationid for e in events if e.type == ev.RELEASE_COMMITTED] == \
            [body["commit"]]
        assert PASSWORD not in json.dumps([e.to_dict() for e in events])
        args[3] = "web=web"  # no tag: refused before anything is pushed
        bad = await asyncio.to_thread(run, PASSWORD)
    assert bad.returncode == 1 and "a tag" in bad.stderr


READ_ONLY = """#!/bin/sh
# only the account with write access may push (the read token is shared with the renderer)
[ "$REMOTE_USER" = "pusher" ] || { echo "$REMOTE_USER has read access only" >&2; exit 1; }
"""


async def test_pushes_use_the_push_credentials_and_reads_keep_the_read_ones(
        bus: EventBus, upstream: Upstream, tmp_path: Path) -> None:
    """``CONVEYOR_GIT_PUSH_*`` (k8s/base: the Secret ``conveyor-gitops``, mounted in the api
    and the git-watcher only) pushes; ``CONVEYOR_GIT_*`` alone, a read-only account here, is
    refused by the server; a push token file that is not there is named, never guessed."""
    from orchestrator.adapters.git_source import credentials_from_env, push_credentials_from_env

    GitHttpServer.enable_push(upstream.bare)
    hook = upstream.bare / "hooks" / "pre-receive"
    hook.write_text(READ_ONLY)
    hook.chmod(0o755)
    token_file = tmp_path / "gitops" / "git-token"
    token_file.parent.mkdir()
    token_file.write_text("push-T0ken-value\n")
    reader = {"CONVEYOR_GIT_USERNAME": "reader", "CONVEYOR_GIT_PASSWORD": "read-0nly-value"}
    pusher = {**reader, "CONVEYOR_GIT_PUSH_USERNAME": "pusher",
              "CONVEYOR_GIT_PUSH_TOKEN_FILE": str(token_file)}
    assert push_credentials_from_env(reader) == credentials_from_env(reader)
    async with GitHttpServer(upstream.root, users={"reader": "read-0nly-value",
                                                   "pusher": "push-T0ken-value"}) as http:
        settings = Settings(nats_url="", data_dir=tmp_path / "data",
                            repo=http.url(upstream.name), branch="main")

        def ops(environ: dict[str, str]) -> GitOps:
            return GitOps(Resources.around(bus, settings), environ=environ, max_attempts=1)

        with pytest.raises(PermanentError) as refused:
            await ops(reader).release("dev", ["web=web:8.0"])
        assert "pre-receive hook declined" in str(refused.value)  # the reader got in, no further
        before = len(http.remote_users)
        done = await ops(pusher).release("dev", ["web=web:8.0"])
        assert done.commit == git(upstream.bare, "rev-parse", "main")
        assert set(http.remote_users[before:]) == {"pusher"}  # its fetch and its push
        token_file.unlink()  # the optional Secret was never created
        with pytest.raises(PermanentError, match=str(token_file)):
            await ops(pusher).release("dev", ["web=web:9.0"])
    assert "read-0nly-value" not in str(refused.value)


async def test_a_branch_that_keeps_moving_is_transient(bus: EventBus, daemon: GitDaemon,
                                                       upstream: Upstream,
                                                       tmp_path: Path) -> None:
    theirs = upstream.push({"README": "by hand\n"}, "theirs", branch="theirs")
    (upstream.bare / "theirs").write_text(theirs)
    hook = upstream.bare / "hooks" / "update"
    hook.write_text(RACE_HOOK)
    hook.chmod(0o755)
    with pytest.raises(TransientError) as info:
        await gitops(bus, daemon, upstream, tmp_path / "data", max_attempts=1).release(
            "dev", ["web=web:1.5.0"])
    assert info.value.reason == "TargetMoved"
    assert git(upstream.bare, "rev-parse", "main") == theirs  # theirs stays, ours not forced


async def test_a_refused_promotion_is_in_the_log_with_its_reason(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="dev has no deployment") as info:
        await gitops(bus, daemon, upstream, tmp_path / "data").promote("dev", "prod")
    assert info.value.reason == "PromotionRefused"
    events = await wait_for_events(bus, lambda es: any(
        e.type == ev.PROMOTION_REFUSED for e in es))
    kinds = [(e.type, e.subject) for e in events if e.type.startswith("conveyor.promotion")]
    assert kinds == [(ev.PROMOTION_REQUESTED, "prod"), (ev.PROMOTION_REFUSED, "prod")]
    assert "no deployment" in events[-1].data["reason"]
    assert git(upstream.bare, "rev-list", "--count", "main") == "1"


def test_rollback_restores_the_render_inputs_and_nothing_else(tmp_path: Path) -> None:
    """The environment's directory and the base its kustomization reads come back; the
    configuration and other environments keep their head."""
    up = Upstream(tmp_path / "srv")
    old = up.push(FILES, "first")
    up.push({"envs/dev/kustomization.yaml": DEV_KUSTOMIZATION.replace("1.0.0", "2.0.0"),
             "envs/dev/extra.yaml": "kind: ConfigMap\n",
             "base/deploy.yaml": "kind: Deployment # changed\n",
             "envs/prod/kustomization.yaml": "resources: []\n",
             "conveyor.yaml": CONFIG + "# reviewed\n"}, "later")
    head = git(up.bare, "rev-parse", "main")
    config = decl.read_config(up.bare, head)
    tree, paths = decl.restore_inputs(up.bare, head, old, config.environments["dev"])
    assert paths == ["base", "envs/dev"]
    files = git(up.bare, "ls-tree", "-r", "--name-only", tree).splitlines()
    assert "envs/dev/extra.yaml" not in files  # added later under an input: removed
    assert git(up.bare, "show", f"{tree}:envs/dev/kustomization.yaml") + "\n" == \
        DEV_KUSTOMIZATION
    assert git(up.bare, "show", f"{tree}:base/deploy.yaml") + "\n" == FILES["base/deploy.yaml"]
    assert git(up.bare, "show", f"{tree}:envs/prod/kustomization.yaml") == "resources: []"
    assert git(up.bare, "show", f"{tree}:conveyor.yaml").endswith("# reviewed")


async def test_an_environment_of_another_source_is_released_in_that_repository(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    """``source: apps``: the declaration lives in the apps repository, pushed with that
    source's credentials (none here: git daemon), and conveyor.yaml's repository is untouched."""
    apps = Upstream(upstream.root, "apps")
    apps.push({"envs/web/kustomization.yaml": "resources: []\nimages:\n- name: web\n"
                                              "  newTag: '1'\n"}, "apps")
    config = CONFIG.replace("environments:\n", "environments:\n  web:\n    path: envs/web\n"
                            "    source: apps\n") + \
        f"sources:\n  apps:\n    url: {daemon.url(apps.name)}\n    branch: main\n"
    upstream.push({"conveyor.yaml": config}, "add the apps source")
    config_head = git(upstream.bare, "rev-parse", "main")
    result = await gitops(bus, daemon, upstream, tmp_path / "data").release(
        "web", ["web=web:2"])
    assert result.commit == git(apps.bare, "rev-parse", "main")
    assert "newTag: '2'" in show(apps.bare, "envs/web/kustomization.yaml")
    assert git(upstream.bare, "rev-parse", "main") == config_head


async def test_a_local_checkout_is_released_into_when_clean(bus: EventBus,
                                                            tmp_path: Path) -> None:
    """``conveyor up --repo ./repo`` watches a checkout: a release moves its branch and its
    working tree together (git's ``updateInstead``), and refuses while it has changes."""
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    for name, text in FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    settings = Settings(nats_url="", data_dir=tmp_path / "data", repo=str(work), branch="")
    ops = GitOps(Resources.around(bus, settings), environ={})
    result = await ops.release("dev", ["web=web:8.0"])
    assert git(work, "rev-parse", "HEAD") == result.commit
    assert git(work, "status", "--porcelain") == ""  # the working tree followed
    assert 'newTag: "8.0"' in (work / "envs/dev/kustomization.yaml").read_text()
    (work / "README").write_text("work in progress\n")
    git(work, "add", "README")
    with pytest.raises(PermanentError, match="uncommitted changes") as info:
        await ops.release("dev", ["web=web:9.0"])
    assert info.value.reason == "CheckoutDirty"
    assert git(work, "rev-parse", "HEAD") == result.commit


async def test_another_sources_credentials_reach_only_what_the_operator_allows(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``sources.apps.credentials.password: ${APPS_PASSWORD}``: pushed with it when the
    operator allows the name (``--env-allow APPS_*``), refused, naming why, when not."""
    from orchestrator.secrets import SecretPolicy

    apps = Upstream(upstream.root, "apps")
    apps.push({"envs/web/kustomization.yaml": "images:\n- name: web\n  newTag: '1'\n"}, "a")
    GitHttpServer.enable_push(apps.bare)
    async with GitHttpServer(upstream.root, users={"ci": PASSWORD}) as http:
        config = CONFIG.replace("environments:\n", "environments:\n  web:\n    path: envs/web\n"
                                "    source: apps\n") + (
            f"sources:\n  apps:\n    url: {http.url(apps.name)}\n    branch: main\n"
            "    credentials: {username: ci, password: '${APPS_PASSWORD}'}\n")
        upstream.push({"conveyor.yaml": config}, "add the apps source")
        monkeypatch.setenv("APPS_PASSWORD", PASSWORD)

        def ops(policy: SecretPolicy) -> GitOps:
            settings = Settings(nats_url="", data_dir=tmp_path / "data",
                                repo=daemon.url(upstream.name), branch="main", secrets=policy)
            return GitOps(Resources.around(bus, settings), environ={})

        with pytest.raises(PermanentError, match="APPS_PASSWORD") as info:
            await ops(SecretPolicy()).release("web", ["web=web:2"])
        assert PASSWORD not in str(info.value)
        assert git(apps.bare, "rev-list", "--count", "main") == "1"
        result = await ops(SecretPolicy(env_allow=("APPS_*",))).release("web", ["web=web:2"])
    assert result.commit == git(apps.bare, "rev-parse", "main")
    assert "ci" in http.remote_users
