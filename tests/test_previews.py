"""Pull-request previews on a running Conveyor: a signed ``pull_request`` delivery (GitHub,
GitLab, Gitea, Forgejo, Bitbucket Cloud), the PR head fetched from the real git server
(``refs/pull/N/head`` as GitHub serves it, ``refs/merge-requests/N/head`` on GitLab, the source
branch on Bitbucket), each affected environment rendered and diffed against what it runs, one
comment kept up to date and a status per environment on the forge's contract server; nothing
applied."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.domain.webhooks import sign
from orchestrator.settings import Settings
from services.api.app import ApiService
from tests.support.conveyors import running
from tests.support.forges import ForgeServer
from tests.support.gitservers import GitHttpServer, Upstream, git
from tests.support.waits import wait_for_events

SECRET = "preview-webhook-secret"
TOKEN = "preview-forge-token"
GIT_PASSWORD = "preview-git-Secret-value"
PASSWORD_OLD = "hunter2-old-value"
PASSWORD_NEW = "hunter2-new-value"


def secret(password: str) -> str:
    return ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\n"
            f"stringData:\n  password: {password}\n")


def files(replicas: int = 1, password: str = PASSWORD_OLD) -> dict[str, str]:
    out = demo_files(dev_replicas=replicas)
    out["envs/dev/kustomization.yaml"] = out["envs/dev/kustomization.yaml"].replace(
        "  - namespace.yaml\n", "  - namespace.yaml\n  - secret.yaml\n")
    out["envs/dev/secret.yaml"] = secret(password)
    return out


EVENT_HEADER = {"github": "X-GitHub-Event", "gitea": "X-Gitea-Event",
                "forgejo": "X-Forgejo-Event"}
SYNC = {"github": "synchronize", "gitea": "synchronized", "forgejo": "synchronized",
        "gitlab": "update", "bitbucket": "updated"}
FAILED = {"github": "failure", "gitea": "failure", "forgejo": "failure", "gitlab": "failed",
          "bitbucket": "FAILED"}
SUCCESS = {"bitbucket": "SUCCESSFUL"}
BITBUCKET_EVENT = {"opened": "pullrequest:created", "updated": "pullrequest:updated",
                   "closed": "pullrequest:fulfilled"}


def bitbucket(action: str, number: int, head: str,
              source_repo: str = "team/config") -> tuple[bytes, dict[str, str]]:
    """A Bitbucket Cloud pull request event (support.atlassian.com/bitbucket-cloud/docs/
    event-payloads/): the Pull Request entity with source/destination branch, commit (12 hex
    digits) and repository; the event in ``X-Event-Key``, signed in ``X-Hub-Signature``."""
    repo = {"type": "repository", "full_name": "team/config", "name": "config",
            "links": {"html": {"href": "https://bitbucket.org/team/config"}}}
    pr = {"type": "pullrequest", "id": number, "title": "scale dev",
          "state": "MERGED" if action == "closed" else "OPEN",
          "source": {"branch": {"name": "feature"}, "commit": {"hash": head[:12]},
                     "repository": {**repo, "full_name": source_repo}},
          "destination": {"branch": {"name": "main"}, "commit": {"hash": "0" * 12},
                          "repository": repo},
          "links": {"html": {"href": f"https://bitbucket.org/team/config/pull-requests/"
                                     f"{number}"}}}
    body = json.dumps({"pullrequest": pr, "repository": repo,
                       "actor": {"type": "user", "display_name": "A Committer"}}).encode()
    return body, {**sign("bitbucket", body, SECRET), "X-Event-Key": BITBUCKET_EVENT[action],
                  "X-Request-UUID": f"req-{number}-{head[:8]}-{action}",
                  "Content-Type": "application/json"}


def delivery(provider: str, action: str, number: int,
             head: str) -> tuple[bytes, dict[str, str]]:
    if provider == "bitbucket":
        return bitbucket(action, number, head)
    if provider == "gitlab":  # a "Merge Request Hook" (docs.gitlab.com/user/project/
        # integrations/webhook_events/#merge-request-events); the secret comes as a token
        attributes = {"iid": number, "action": {"opened": "open"}.get(action, action),
                      "source_branch": "feature", "target_branch": "main",
                      "last_commit": {"id": head}, **({"oldrev": "0" * 40}
                                                       if action == "update" else {})}
        gl = json.dumps({"object_kind": "merge_request", "object_attributes": attributes,
                         "project": {"path_with_namespace": "team/config"}}).encode()
        return gl, {**sign("gitlab", gl, SECRET), "X-Gitlab-Event": "Merge Request Hook",
                    "Content-Type": "application/json"}
    body = json.dumps({"action": action, "number": number,
                       "pull_request": {"number": number, "head": {"sha": head,
                                                                   "ref": "feature"},
                                        "base": {"ref": "main"}},
                       "repository": {"full_name": "team/config"}}).encode()
    return body, {**sign(provider, body, SECRET), EVENT_HEADER[provider]: "pull_request",
                  "Content-Type": "application/json"}


def posted(head: str) -> Callable[[list[Event]], bool]:
    return lambda es: any(e.type in (ev.PREVIEW_POSTED, ev.PREVIEW_FAILED)
                          and e.correlationid == head for e in es)


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "forgejo", "bitbucket"])
async def test_pull_request_preview_comment_and_statuses(
        provider: str, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kind = "gitea" if provider == "forgejo" else provider
    ref = {"gitlab": "refs/merge-requests/7/head",  # Bitbucket: the source branch itself
           "bitbucket": "refs/heads/feature"}.get(provider, "refs/pull/7/head")
    up = Upstream(tmp_path / "srv", "config")
    first = up.push(files(), "initial")
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("CONVEYOR_GIT_USERNAME", "conveyor")  # the operator's credentials:
    monkeypatch.setenv("CONVEYOR_GIT_PASSWORD", GIT_PASSWORD)  # the watcher's and the preview's
    GitHttpServer.enable_push(up.bare)
    async with GitHttpServer(up.root, users={"conveyor": GIT_PASSWORD}) as server, \
            ForgeServer(kind, up.root, TOKEN) as forge:
        monkeypatch.setenv("CONVEYOR_FORGE", provider)
        monkeypatch.setenv("CONVEYOR_FORGE_API_URL", forge.api_url)
        monkeypatch.setenv("CONVEYOR_FORGE_TOKEN", TOKEN)
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=server.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        async with running(settings) as conveyor, aiohttp.ClientSession() as http:
            for env in ("dev", "prod"):
                await wait_for_events(bus, lambda es, env=env: any(
                    e.type == ev.APPLY_SUCCEEDED and e.subject == env for e in es))
            deployed = git(up.bare, "rev-parse", "deploy/dev")
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            url = f"{api.url}/api/v1/previews/{provider}"

            # the pull request: dev scaled to 4, its Secret changed; prod untouched
            head = up.push(files(replicas=4, password=PASSWORD_NEW), "scale dev",
                           branch="feature")
            git(up.bare, "update-ref", ref, head)
            body, headers = delivery(provider, "opened", 7, head)
            forged = {k: ("sha256=" + "0" * 64 if "sig" in k.lower() or "token" in k.lower()
                          else v) for k, v in headers.items()}
            async with http.post(url, data=body, headers=forged) as resp:
                assert resp.status == 401  # a wrong signature: refused
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
            events = await wait_for_events(bus, posted(head))
            assert not [e for e in events if e.type == ev.PREVIEW_FAILED]
            [rendered] = [e for e in events if e.type == ev.PREVIEW_RENDERED]
            assert rendered.subject == "dev" and rendered.data["ok"]
            assert rendered.data["running"] == first
            assert rendered.data["changes"] == {"added": 0, "changed": 2, "removed": 0}
            [comment] = forge.comments
            assert comment.number == 7 and "<!-- conveyor-preview -->" in comment.body
            assert "`dev` (runs " in comment.body and "`prod`" not in comment.body
            assert "  ~ Deployment.apps/dev/web\n" in comment.body
            assert "  ~ Secret/dev/db\n" in comment.body
            assert "+  password: <redacted, changed>" in comment.body
            assert "replicas: 4" in comment.body
            assert PASSWORD_NEW not in comment.body and PASSWORD_OLD not in comment.body
            assert forge.statuses == [{"sha": head, "state": SUCCESS.get(provider, "success"),
                                       "context": "conveyor/dev",
                                       "description": forge.statuses[0]["description"]}]

            # a push to the pull request breaks the render: the same comment is updated
            broken = up.push({"envs/dev/kustomization.yaml": "resources: [missing.yaml]\n"},
                             "oops", branch="feature")
            git(up.bare, "update-ref", ref, broken)
            body, headers = delivery(provider, SYNC[provider], 7, broken)
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 202
            await wait_for_events(bus, posted(broken))
            assert len(forge.comments) == 1 and forge.comments[0].edits == 1
            assert "render failed" in forge.comments[0].body
            assert forge.statuses[-1]["sha"] == broken
            assert forge.statuses[-1]["state"] == FAILED[provider]
            if provider == "bitbucket":  # shown on the pull request: its source branch
                assert forge.status_refnames == ["feature", "feature"]

            # two deliveries at once for a new pull request: still one comment
            git(up.bare, "update-ref", ref.replace("/7/", "/8/"), head)
            first_body, first_headers = delivery(provider, "opened", 8, head)
            again_body, again_headers = delivery(provider, SYNC[provider], 8, head)
            for data, hdrs in ((first_body, first_headers), (again_body, again_headers)):
                async with http.post(url, data=data, headers=hdrs) as resp:
                    assert resp.status == 202
            events = await wait_for_events(bus, lambda es: sum(
                1 for e in es if e.type == ev.PREVIEW_POSTED
                and e.data.get("pull_request") == 8) == 2)
            assert [e.data["created"] for e in events if e.type == ev.PREVIEW_POSTED
                    and e.data.get("pull_request") == 8] == [True, False]
            assert len([c for c in forge.comments if c.number == 8]) == 1

            body, headers = delivery(provider, "closed", 7, broken)
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200 and "ignored" in await resp.json()
            if provider == "bitbucket":  # a fork's head is not in the repository: not fetched
                body, headers = bitbucket("opened", 9, head, source_repo="stranger/config")
                async with http.post(url, data=body, headers=headers) as resp:
                    assert resp.status == 200
                    assert "fork" in (await resp.json())["ignored"]
            every = [s.event async for s in bus.read()]
    assert server.remote_users and set(server.remote_users) == {"conveyor"}
    # nothing of the pull request was applied anywhere
    assert git(up.bare, "rev-parse", "deploy/dev") == deployed
    assert not [e for e in every if e.correlationid in (head, broken)
                and e.stage in ("commit", "render", "apply")]


async def test_a_pull_request_cannot_read_the_apis_push_token(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The api renders previews and holds the push token (k8s/base: conveyor-gitops mounted as
    files). A pull request that symlinks that file into its render gets a failed preview
    naming the escape, and the token's value appears in no comment, status or event; the
    preview fetched with the push credentials (CONVEYOR_GIT_PUSH_*)."""
    up = Upstream(tmp_path / "srv", "config")
    up.push(files(), "initial")
    token_file = tmp_path / "gitops" / "git-token"
    token_file.parent.mkdir()
    token_file.write_text(GIT_PASSWORD + "\n")
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("CONVEYOR_GIT_USERNAME", "conveyor")  # the watcher's
    monkeypatch.setenv("CONVEYOR_GIT_PASSWORD", GIT_PASSWORD)
    monkeypatch.setenv("CONVEYOR_GIT_PUSH_USERNAME", "pusher")  # the api's
    monkeypatch.setenv("CONVEYOR_GIT_PUSH_TOKEN_FILE", str(token_file))
    async with GitHttpServer(up.root, users={"conveyor": GIT_PASSWORD,
                                             "pusher": GIT_PASSWORD}) as server, \
            ForgeServer("github", up.root, TOKEN) as forge:
        monkeypatch.setenv("CONVEYOR_FORGE", "github")
        monkeypatch.setenv("CONVEYOR_FORGE_API_URL", forge.api_url)
        monkeypatch.setenv("CONVEYOR_FORGE_TOKEN", TOKEN)
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=server.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        async with running(settings) as conveyor, aiohttp.ClientSession() as http:
            await wait_for_events(bus, lambda es: any(
                e.type == ev.APPLY_SUCCEEDED and e.subject == "dev" for e in es))
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            git(up.work, "checkout", "-q", "-B", "feature")
            (up.work / "envs" / "dev" / "token.yaml").symlink_to(token_file)
            kustomization = up.work / "envs" / "dev" / "kustomization.yaml"
            kustomization.write_text(kustomization.read_text().replace(
                "  - secret.yaml\n", "  - secret.yaml\n  - token.yaml\n"))
            git(up.work, "add", "-A")
            git(up.work, "commit", "-q", "-m", "read the token")
            git(up.work, "push", "-q", "--force", str(up.bare), "HEAD:refs/heads/feature")
            head = git(up.work, "rev-parse", "HEAD")
            git(up.bare, "update-ref", "refs/pull/3/head", head)
            before = len(server.remote_users)
            body, headers = delivery("github", "opened", 3, head)
            async with http.post(f"{api.url}/api/v1/previews/github", data=body,
                                 headers=headers) as resp:
                assert resp.status == 202
            events = await wait_for_events(bus, posted(head))
            every = [s.event async for s in bus.read()]
    [rendered] = [e for e in events if e.type == ev.PREVIEW_RENDERED]
    assert not rendered.data["ok"] and "outside the repository" in rendered.data["error"]
    [comment] = forge.comments
    assert "render failed" in comment.body
    assert forge.statuses[-1]["state"] == "failure"
    for text in (comment.body, *(s["description"] for s in forge.statuses),
                 json.dumps([e.to_dict() for e in every])):
        assert GIT_PASSWORD not in text
    assert set(server.remote_users[before:]) == {"pusher"}  # the preview's fetch
