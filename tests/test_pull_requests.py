"""``--via pull-request``: the commit goes to a new branch of the real git server and the pull
request is opened through the forge's API (contract servers in tests/support/forges.py,
written from GitHub's, GitLab's, Gitea's and Bitbucket Cloud's published API references)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.errors import PermanentError, TransientError
from orchestrator.gitops.forge import ForgeSettings, repo_path
from orchestrator.gitops.workflow import BranchProtected, GitOps
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from tests.support.forges import KINDS, ForgeServer
from tests.support.gitservers import GitDaemon, Upstream, git
from tests.support.waits import wait_for_events
from tests.test_releases import FILES

TOKEN = "forge-T0ken-value"
PROTECT_MAIN = """#!/bin/sh
# main takes changes through pull requests only; other branches are open
while read old new ref; do
  if [ "$ref" = "refs/heads/main" ]; then echo "main is protected" >&2; exit 1; fi
done
exit 0
"""


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv")
    up.push(FILES, "first")
    hook = up.bare / "hooks" / "pre-receive"
    hook.write_text(PROTECT_MAIN)
    hook.chmod(0o755)
    return up


@pytest.fixture
async def daemon(upstream: Upstream) -> AsyncIterator[GitDaemon]:
    async with GitDaemon(upstream.root, receive_pack=True) as d:
        yield d


def ops(bus: EventBus, daemon: GitDaemon, upstream: Upstream, data: Path,
        forge: ForgeSettings | None) -> GitOps:
    settings = Settings(nats_url="", data_dir=data, repo=daemon.url(upstream.name),
                        branch="main")
    return GitOps(Resources.around(bus, settings), environ={}, forge=forge)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_protected_branch_takes_the_release_as_a_pull_request(
        kind: str, bus: EventBus, daemon: GitDaemon, upstream: Upstream,
        tmp_path: Path) -> None:
    main = git(upstream.bare, "rev-parse", "main")
    async with ForgeServer(kind, upstream.root, TOKEN) as server:
        forge = ForgeSettings(kind, server.api_url, "team/repo", TOKEN)
        gitops = ops(bus, daemon, upstream, tmp_path / "data", forge)
        with pytest.raises(BranchProtected, match="use --via pull-request"):
            await gitops.release("dev", ["web=web:5.0"])
        result = await gitops.release("dev", ["web=web:5.0"], via="pull-request",
                                      message="Ship 5.0")
    assert git(upstream.bare, "rev-parse", "main") == main  # main untouched
    pr = result.pull_request
    assert pr is not None and pr.base == "main" and pr.head.startswith("conveyor/release/dev-")
    [opened] = server.pulls
    assert (opened.repo, opened.number, opened.head, opened.base, opened.title) == (
        "team/repo", pr.number, pr.head, "main", "Ship 5.0")
    assert opened.sha == result.commit == git(upstream.bare, "rev-parse", pr.head)
    if kind == "bitbucket":
        assert pr.url == f"https://bitbucket.example/team/repo/pull-requests/{pr.number}"
    assert "Conveyor-Release: web=web:5.0" in opened.body
    assert git(upstream.bare, "rev-parse", f"{pr.head}^") == main
    assert 'newTag: "5.0"' in git(upstream.bare, "show", f"{pr.head}:envs/dev/kustomization.yaml")
    events = await wait_for_events(bus, lambda es: any(e.type == ev.RELEASE_PROPOSED
                                                       for e in es))
    [event] = [e for e in events if e.type == ev.RELEASE_PROPOSED]
    assert event.data["pull_request"]["number"] == pr.number
    assert event.data["pull_request"]["url"] == pr.url and pr.url.startswith("https://")
    assert not any(e.type == ev.RELEASE_COMMITTED for e in events)


@pytest.mark.parametrize(("kind", "delay"), [("github", 30.0), ("gitlab", 7.0),
                                             ("gitea", 7.0), ("bitbucket", 60.0)])
async def test_rate_limits_are_transient_with_the_forges_delay(
        kind: str, delay: float, bus: EventBus, daemon: GitDaemon, upstream: Upstream,
        tmp_path: Path) -> None:
    async with ForgeServer(kind, upstream.root, TOKEN, rate_limited=1) as server:
        forge = ForgeSettings(kind, server.api_url, "team/repo", TOKEN)
        with pytest.raises(TransientError) as info:
            await ops(bus, daemon, upstream, tmp_path / "data", forge).release(
                "dev", ["web=web:6.0"], via="pull-request")
        assert info.value.reason == "RateLimited"
        assert info.value.delay is not None and delay <= info.value.delay <= 60
        # the limit passed: asking again opens it
        again = await ops(bus, daemon, upstream, tmp_path / "data", forge).release(
            "dev", ["web=web:6.0"], via="pull-request")
    assert again.pull_request is not None and len(server.pulls) == 1


async def test_a_refused_token_is_named_never_shown(bus: EventBus, daemon: GitDaemon,
                                                    upstream: Upstream,
                                                    tmp_path: Path) -> None:
    async with ForgeServer("github", upstream.root, TOKEN) as server:
        forge = ForgeSettings("github", server.api_url, "team/repo", "wr0ng-T0ken-value")
        with pytest.raises(PermanentError) as info:
            await ops(bus, daemon, upstream, tmp_path / "data", forge).release(
                "dev", ["web=web:7.0"], via="pull-request")
    assert info.value.reason == "AuthenticationFailed"
    assert "wr0ng-T0ken-value" not in str(info.value) and not server.pulls


async def test_without_a_forge_the_error_says_what_the_operator_sets(
        bus: EventBus, daemon: GitDaemon, upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="CONVEYOR_FORGE"):
        await ops(bus, daemon, upstream, tmp_path / "data", None).release(
            "dev", ["web=web:7.0"], via="pull-request")


def test_forge_settings_from_the_operators_environment() -> None:
    assert ForgeSettings.from_env({}) is None
    github = ForgeSettings.from_env({"CONVEYOR_FORGE": "github", "CONVEYOR_FORGE_TOKEN": "t"})
    assert github is not None and github.api_url == "https://api.github.com"
    ghe = ForgeSettings.from_env({"CONVEYOR_FORGE": "github",
                                  "CONVEYOR_FORGE_API_URL": "https://ghe.example/api/v3/"})
    assert ghe is not None and ghe.api_url == "https://ghe.example/api/v3"
    cloud = ForgeSettings.from_env({"CONVEYOR_FORGE": "bitbucket", "CONVEYOR_FORGE_TOKEN": "t",
                                    "CONVEYOR_FORGE_USERNAME": "bot"})
    assert cloud is not None and cloud.api_url == "https://api.bitbucket.org/2.0"
    assert cloud.auth() == {"Authorization": "Basic Ym90OnQ=", "Accept": "application/json"}
    assert ForgeSettings("bitbucket", "u", token="t").auth()["Authorization"] == "Bearer t"
    with pytest.raises(PermanentError, match="forgejo, bitbucket"):
        ForgeSettings.from_env({"CONVEYOR_FORGE": "bitbucket-server"})
    forgejo = ForgeSettings.from_env({"CONVEYOR_FORGE": "forgejo",
                                      "CONVEYOR_FORGE_API_URL": "https://code.example/api/v1"})
    assert forgejo is not None and forgejo.kind == "gitea"
    with pytest.raises(PermanentError, match="needs CONVEYOR_FORGE_API_URL"):
        ForgeSettings.from_env({"CONVEYOR_FORGE": "gitea"})
    assert "token=" not in repr(github)
    token_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"forge-token-{os.getpid()}"
    token_file.write_text("from-a-mounted-secret\n")
    try:
        mounted = ForgeSettings.from_env({"CONVEYOR_FORGE": "gitlab",
                                          "CONVEYOR_FORGE_TOKEN_FILE": str(token_file)})
        assert mounted is not None and mounted.read_token() == "from-a-mounted-secret"
        token_file.write_text("rotated\n")  # re-read at each request
        assert mounted.read_token() == "rotated"
    finally:
        token_file.unlink()
    with pytest.raises(PermanentError, match="CONVEYOR_FORGE_TOKEN"):
        ForgeSettings("github", "https://api.github.com").read_token()
    assert github is not None
    assert repo_path(github, "https://github.com/team/web.git") == "team/web"
    assert repo_path(github, "git@github.com:team/web.git") == "team/web"
    with pytest.raises(PermanentError, match="CONVEYOR_FORGE_REPO"):
        repo_path(github, "git://127.0.0.1/web.git")


@pytest.mark.parametrize("kind", KINDS)
async def test_the_preview_comment_is_found_on_a_later_page_and_updated(
        kind: str, tmp_path: Path) -> None:
    """Forges page comments (``Link: rel="next"``; GitLab also ``X-Next-Page``, Gitea at most
    50 a page, Bitbucket ``next`` in the page): ours may be the 121st of 150. Bitbucket lists
    deleted comments too: one holding the marker is not ours to edit."""
    from orchestrator.gitops.forge import Forge
    from tests.support.forges import Comment

    async with ForgeServer(kind, tmp_path, TOKEN) as server:
        server.comments = [Comment(i, 7, f"comment {i}") for i in range(150)]
        server.comments[120].body = "<!-- marker -->\nold preview"
        if kind == "bitbucket":
            server.comments[3] = Comment(3, 7, "<!-- marker -->\ngone", deleted=True)
        # Bitbucket: an app password, sent as Basic with the account's name
        settings = ForgeSettings(kind, server.api_url, "team/repo", TOKEN,
                                 username="conveyor-bot" if kind == "bitbucket" else "")
        forge = Forge(settings, "")
        found, created = await forge.upsert_comment(7, "<!-- marker -->\nnew", "<!-- marker -->")
        assert (found, created) == (120, False)
        assert server.comments[120].body.endswith("new") and len(server.comments) == 150
        assert server.comments[120].edits == 1
        other, created = await forge.upsert_comment(8, "<!-- marker -->\nfirst", "<!-- marker -->")
        assert created and server.comments[-1].number == 8 and server.comments[-1].id == other
        await forge.set_status("a" * 40, "conveyor/dev", "success", "3 objects")
        await forge.set_status("a" * 40, "conveyor/prod", "failure", "render failed")
        with pytest.raises(PermanentError, match="setting the status"):
            await forge.set_status("a" * 40, "conveyor/dev", "great", "")
        if kind == "bitbucket":  # a status per key: posted again, it is replaced
            await forge.set_status("a" * 40, "conveyor/dev", "success", "3 objects",
                                   url="https://bitbucket.example/team/repo/pull-requests/7")
            wrong = Forge(ForgeSettings(kind, server.api_url, "team/repo", TOKEN,
                                        username="someone-else"), "")
            with pytest.raises(PermanentError, match="refused the token"):
                await wrong.set_status("a" * 40, "conveyor/dev", "success", "")
    failed = {"gitlab": "failed", "bitbucket": "FAILED"}.get(kind, "failure")  # their words
    success = "SUCCESSFUL" if kind == "bitbucket" else "success"
    assert sorted(server.statuses, key=lambda s: s["context"]) == [
        {"sha": "a" * 40, "state": success, "context": "conveyor/dev",
         "description": "3 objects"},
        {"sha": "a" * 40, "state": failed, "context": "conveyor/prod",
         "description": "render failed"}]


def test_preview_deliveries_and_the_comment() -> None:
    import json as _json

    from orchestrator.domain import preview as pv

    def body(action: str, **pr: object) -> bytes:
        return _json.dumps({"action": action, "repository": {"full_name": "team/web"},
                            "pull_request": {"number": 3, "head": {"sha": "b" * 40,
                                                                   "ref": "f"},
                                             "base": {"ref": "main"}, **pr}}).encode()

    gh = {"X-GitHub-Event": "pull_request"}
    event = pv.parse_pull_request(gh, body("synchronize"))
    assert event == pv.PullRequestEvent(3, "b" * 40, "f", "main", "team/web", "synchronize")
    assert pv.parse_pull_request(gh, body("closed")) is None
    assert pv.parse_pull_request({"X-GitHub-Event": "push"}, body("opened")) is None
    with pytest.raises(ValueError, match="without number"):
        pv.parse_pull_request(gh, body("opened", head=None))
    failed = pv.EnvPreview("dev", error="kustomize: missing.yaml not found")
    assert pv.status(failed) == ("failure", "render failed: kustomize: missing.yaml not found")
    assert pv.status(pv.EnvPreview("prod", objects=3)) == ("success", "3 objects, no change")
    text = pv.comment(event, [failed])
    assert text.startswith(pv.MARKER) and "render failed" in text
    assert "changes no environment" in pv.comment(event, [])
    huge = pv.EnvPreview("dev", error="x" * 100_000)
    assert len(pv.comment(event, [huge] * 30)) <= pv.COMMENT_MAX + 100


def test_gitlab_merge_request_deliveries() -> None:
    import json as _json

    from orchestrator.domain import preview as pv

    def body(action: str, **extra: object) -> bytes:
        return _json.dumps({"object_kind": "merge_request", "project": {
            "path_with_namespace": "group/sub/web"}, "object_attributes": {
            "iid": 12, "action": action, "source_branch": "f", "target_branch": "main",
            "last_commit": {"id": "c" * 40}, **extra}}).encode()

    hook = {"X-Gitlab-Event": "Merge Request Hook"}
    event = pv.parse_pull_request(hook, body("open"), "gitlab")
    assert event == pv.PullRequestEvent(12, "c" * 40, "f", "main", "group/sub/web", "opened",
                                        "gitlab")
    assert event.fetch_ref == "refs/merge-requests/12/head"
    pushed = pv.parse_pull_request(hook, body("update", oldrev="d" * 40), "gitlab")
    assert pushed is not None and pushed.action == "synchronize"
    assert pv.parse_pull_request(hook, body("update"), "gitlab") is None  # a title edit
    assert pv.parse_pull_request(hook, body("merge"), "gitlab") is None
    assert pv.parse_pull_request({"X-Gitlab-Event": "Push Hook"}, body("open"),
                                 "gitlab") is None


def test_bitbucket_pull_request_deliveries() -> None:
    """Bitbucket Cloud's ``pullrequest:created|updated`` (the event in ``X-Event-Key``): the
    head is the source branch, the commit hash 12 hex digits; a fork is flagged, a branch name
    git refuses is a bad delivery (it would end up in a refspec)."""
    import json as _json

    from orchestrator.domain import preview as pv

    def body(branch: str = "feature/x", source: str = "ws/web", state: str = "OPEN",
             commit: str = "c" * 12) -> bytes:
        repo = {"full_name": "ws/web"}
        return _json.dumps({"repository": repo, "pullrequest": {
            "id": 5, "state": state, "links": {"html": {"href": "https://bb/ws/web/pr/5"}},
            "source": {"branch": {"name": branch}, "commit": {"hash": commit},
                       "repository": {"full_name": source}},
            "destination": {"branch": {"name": "main"}, "repository": repo}}}).encode()

    created = {"X-Event-Key": "pullrequest:created"}
    event = pv.parse_pull_request(created, body(), "bitbucket")
    assert event == pv.PullRequestEvent(5, "c" * 12, "feature/x", "main", "ws/web", "opened",
                                        "bitbucket", "https://bb/ws/web/pr/5", False)
    assert event.fetch_ref == "refs/heads/feature/x"
    updated = pv.parse_pull_request({"X-Event-Key": "pullrequest:updated"}, body(),
                                    "bitbucket")
    assert updated is not None and updated.action == "synchronize"
    fork = pv.parse_pull_request(created, body(source="someone/web"), "bitbucket")
    assert fork is not None and fork.fork
    for key in ("pullrequest:fulfilled", "pullrequest:rejected", "repo:push"):
        assert pv.parse_pull_request({"X-Event-Key": key}, body(), "bitbucket") is None
    assert pv.parse_pull_request(created, body(state="MERGED"), "bitbucket") is None
    for bad in ("a..b", "x:refs/heads/main", "-x", "a b", "x.lock"):
        with pytest.raises(ValueError, match="branch names git refuses"):
            pv.parse_pull_request(created, body(branch=bad), "bitbucket")
    with pytest.raises(ValueError, match="not a hash"):
        pv.parse_pull_request(created, body(commit="HEAD~1"), "bitbucket")
    with pytest.raises(ValueError, match="without id"):
        pv.parse_pull_request(created, b'{"pullrequest": {"id": 5}}', "bitbucket")


def test_a_next_page_on_another_host_is_not_followed_with_the_token() -> None:
    from orchestrator.gitops.forge import Forge

    forge = Forge(ForgeSettings("bitbucket", "https://api.bitbucket.org/2.0", "ws/web", TOKEN),
                  "")
    same = "https://api.bitbucket.org/2.0/repositories/ws/web/pullrequests?page=2"
    assert forge.follow(same) == same
    for elsewhere in ("https://evil.example/2.0/x?page=2", "http://api.bitbucket.org/2.0/x",
                      "https://api.bitbucket.org:8443/2.0/x"):
        with pytest.raises(PermanentError, match="another host") as refused:
            forge.follow(elsewhere)
        assert TOKEN not in str(refused.value)
