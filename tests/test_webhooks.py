"""Webhook verification and push parsing off the providers' documented payloads; giturls."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain import giturls
from orchestrator.domain.webhooks import (
    PROVIDERS,
    RefUpdate,
    detect_provider,
    parse_push,
    sign,
    verify,
)
from orchestrator.errors import PermanentError

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "It's a Secret to Everybody"


def delivery(name: str) -> tuple[dict[str, str], bytes]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data["headers"], json.dumps(data["payload"], indent=2).encode()


def signed(provider: str, name: str, secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    headers, body = delivery(name)
    return {**headers, **sign(provider, body, secret)}, body


# --------------------------------------------------------------------------- verify


def test_github_documented_signature_example() -> None:
    """The worked example from GitHub's "Validating webhook deliveries" page."""
    headers = {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c4"
                                      "6f4379c8b043e17"}
    assert verify("github", headers, b"Hello, World!", [SECRET])
    assert not verify("github", headers, b"Hello, World?", [SECRET])


@pytest.mark.parametrize(("provider", "fixture", "header"), [
    ("github", "github-push", "X-Hub-Signature-256"),
    ("gitea", "gitea-push", "X-Gitea-Signature"),
    ("forgejo", "forgejo-push", "X-Forgejo-Signature"),
    ("bitbucket", "bitbucket-push", "X-Hub-Signature"),
    ("generic", "generic-push", "X-Conveyor-Signature"),
])
def test_hmac_providers(provider: str, fixture: str, header: str) -> None:
    headers, body = signed(provider, fixture)
    assert header in headers
    assert verify(provider, headers, body, [SECRET])
    assert verify(provider, headers, body, ["old-rotated-out", SECRET])  # rotation
    assert not verify(provider, headers, body, ["another secret"])
    assert not verify(provider, headers, body + b" ", [SECRET])  # body tampered
    assert not verify(provider, headers, body, [])  # no secret configured: refuse
    assert not verify(provider, dict(delivery(fixture)[0]), body, [SECRET])  # unsigned
    # header names are case-insensitive, hex digits too
    lower = {k.lower(): v.upper() if k == header else v for k, v in headers.items()}
    lower[header.lower()] = lower[header.lower()].replace("SHA256=", "sha256=")
    assert verify(provider, lower, body, [SECRET])


def test_hmac_formats_match_each_provider_definition() -> None:
    body = b'{"ref":"refs/heads/main"}'
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify("github", {"X-Hub-Signature-256": f"sha256={digest}"}, body, [SECRET])
    assert verify("bitbucket", {"X-Hub-Signature": f"sha256={digest}"}, body, [SECRET])
    assert verify("gitea", {"X-Gitea-Signature": digest}, body, [SECRET])
    assert verify("forgejo", {"X-Forgejo-Signature": digest}, body, [SECRET])
    assert verify("forgejo", {"X-Gitea-Signature": digest}, body, [SECRET])
    assert verify("generic", {"X-Conveyor-Signature": f"sha256={digest}"}, body, [SECRET])
    # a prefix where none belongs, or none where one does, is refused
    assert not verify("gitea", {"X-Gitea-Signature": f"sha256={digest}"}, body, [SECRET])
    assert not verify("github", {"X-Hub-Signature-256": digest}, body, [SECRET])
    # GitHub's legacy SHA-1 header is not enough
    sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    assert not verify("github", {"X-Hub-Signature": f"sha1={sha1}"}, body, [SECRET])


def test_gitlab_token() -> None:
    headers, body = delivery("gitlab-push")
    assert verify("gitlab", {**headers, "X-Gitlab-Token": SECRET}, body, [SECRET])
    assert verify("gitlab", {**headers, "X-Gitlab-Token": SECRET}, body, ["x", SECRET])
    assert not verify("gitlab", {**headers, "X-Gitlab-Token": SECRET + "x"}, body, [SECRET])
    assert not verify("gitlab", {**headers, "X-Gitlab-Token": ""}, body, [SECRET])
    assert not verify("gitlab", headers, body, [SECRET])
    assert not verify("gitlab", {**headers, "X-Gitlab-Token": ""}, body, [""])


def test_unknown_provider_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown webhook provider"):
        verify("gogs-ish", {}, b"", [SECRET])
    with pytest.raises(ValueError, match="unknown webhook provider"):
        parse_push("gogs-ish", {}, b"{}")


# --------------------------------------------------------------------------- parse_push


GITHUB_URLS = {
    "https://github.com/Codertocat/Hello-World",
    "git://github.com/Codertocat/Hello-World.git",
    "git@github.com:Codertocat/Hello-World.git",
    "https://github.com/Codertocat/Hello-World.git",
}


def test_github_push() -> None:
    event = parse_push("github", *delivery("github-push"))
    assert event.kind == "push"
    assert event.repo_urls == GITHUB_URLS
    assert (event.branch, event.after, event.deleted) == (
        "main", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", False)
    assert event.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.matches({"github.com/codertocat/hello-world"})
    assert not event.matches({"github.com/codertocat/other"})


def test_github_branch_deletion() -> None:
    event = parse_push("github", *delivery("github-push-delete"))
    assert (event.kind, event.branch, event.after, event.deleted) == (
        "push", "feature/old", None, True)


def test_github_ping() -> None:
    event = parse_push("github", *delivery("github-ping"))
    assert event.kind == "ping"
    assert event.delivery_id == "4a8b5c7e-12f3-11ef-9b6d-5d2e0f3a7c11"
    assert "git@github.com:Codertocat/Hello-World.git" in event.repo_urls


def test_github_tag_push_and_other_events_are_other() -> None:
    headers, _ = delivery("github-push")
    body = json.dumps({"ref": "refs/tags/v1", "after": "a" * 40, "repository": {}}).encode()
    assert parse_push("github", headers, body).kind == "other"
    issue = {**headers, "X-GitHub-Event": "issues"}
    assert parse_push("github", issue, b'{"action": "opened"}').kind == "other"


def test_gitlab_push_hook() -> None:
    event = parse_push("gitlab", *delivery("gitlab-push"))
    assert event.kind == "push"
    assert (event.branch, event.after) == ("master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    assert event.repo_urls == {
        "http://example.com/mike/diaspora", "git@example.com:mike/diaspora.git",
        "http://example.com/mike/diaspora.git",
    }
    assert event.delivery_id == "13792a34-cac6-4fda-95a8-c58e00a3954e"
    assert {giturls.normalise(u) for u in event.repo_urls} == {"example.com/mike/diaspora"}


def test_gitlab_delivery_falls_back_to_idempotency_key() -> None:
    headers, body = delivery("gitlab-push")
    del headers["X-Gitlab-Event-UUID"]
    assert parse_push("gitlab", headers, body).delivery_id == (
        "f5e5f430-f57b-4e6e-9fac-d9128cd7232f")


def test_gitlab_branch_deletion_and_system_hook_test() -> None:
    headers, body = delivery("gitlab-push")
    payload = json.loads(body)
    payload["after"] = "0" * 40
    event = parse_push("gitlab", headers, json.dumps(payload).encode())
    assert (event.kind, event.deleted, event.after) == ("push", True, None)
    system = {**headers, "X-Gitlab-Event": "System Hook"}
    assert parse_push("gitlab", system, body).kind == "push"  # a push seen by a system hook
    assert parse_push("gitlab", system, b'{"test": true}').kind == "ping"
    tag = {**payload, "object_kind": "tag_push", "ref": "refs/tags/v1"}
    assert parse_push("gitlab", headers, json.dumps(tag).encode()).kind == "other"


def test_gitea_push_is_not_mistaken_for_github() -> None:
    headers, body = delivery("gitea-push")
    assert detect_provider(headers) == "gitea"
    event = parse_push("gitea", headers, body)
    assert (event.kind, event.branch, event.after) == (
        "push", "develop", "bffeb74224043ba2feb48d137756c8a9331c449a")
    assert event.repo_urls == {"http://localhost:3000/gitea/webhooks",
                               "ssh://gitea@localhost:2222/gitea/webhooks.git",
                               "http://localhost:3000/gitea/webhooks.git"}
    assert event.delivery_id == "f6266f16-1bf3-46a5-9ea4-602e06ead473"
    assert event.matches({"localhost:3000/gitea/webhooks"})
    assert event.matches({"localhost:2222/gitea/webhooks"})


def test_forgejo_push() -> None:
    headers, body = delivery("forgejo-push")
    assert detect_provider(headers) == "forgejo"
    event = parse_push("forgejo", headers, body)
    assert (event.kind, event.branch) == ("push", "main")
    assert event.delivery_id == "0a3c1b8e-6f2d-4e59-b7a1-3d9e4c2f8b10"
    assert event.matches({giturls.normalise("git@codeberg.org:platform/Deploy-Config.git")})


def test_bitbucket_push_with_several_changes() -> None:
    headers, body = delivery("bitbucket-push")
    assert detect_provider(headers) == "bitbucket"
    event = parse_push("bitbucket", headers, body)
    assert event.kind == "push"
    assert (event.branch, event.after, event.deleted) == (
        "main", "709d658dc5b6d6afcd46049c2f332ee3f515a67d", False)
    assert event.updates == (
        RefUpdate("main", "709d658dc5b6d6afcd46049c2f332ee3f515a67d", False),
        RefUpdate("feature/old", None, True),
    )  # the tag is not a branch update
    assert "https://bitbucket.org/acme/deploy-config" in event.repo_urls
    assert event.delivery_id == "b3f1e2d4-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    assert event.matches({giturls.normalise("git@bitbucket.org:acme/deploy-config.git")})


def test_bitbucket_ping_and_hook_uuid_fallback() -> None:
    headers, body = delivery("bitbucket-ping")
    assert parse_push("bitbucket", headers, body).kind == "ping"
    del headers["X-Request-UUID"]
    assert parse_push("bitbucket", headers, body).delivery_id == (
        "d2c7a8f1-3e4b-4c5d-9e6f-7a8b9c0d1e2f")


def test_generic_push_and_ping() -> None:
    event = parse_push("generic", *delivery("generic-push"))
    assert (event.kind, event.branch, event.after, event.delivery_id) == (
        "push", "release", "3b18e512dba79e4c8300dd08aeb37f8e728b8dad", "ci-run-48213-1")
    assert event.matches({"git.internal.example:8443/platform/deploy"})
    assert event.matches({"git.internal.example:2222/platform/deploy"})
    assert parse_push("generic", *delivery("generic-ping")).kind == "ping"
    short = json.dumps({"repository": "https://h/x", "branch": "main", "deleted": True})
    deleted = parse_push("generic", {}, short.encode())
    assert (deleted.kind, deleted.branch, deleted.deleted) == ("push", "main", True)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_garbage_body_is_invalid_payload(provider: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_push(provider, {"X-GitHub-Event": "push", "X-Event-Key": "repo:push"}, b"\xff{")
    assert info.value.reason == "InvalidPayload"
    with pytest.raises(PermanentError):
        parse_push(provider, {"X-GitHub-Event": "push"}, b"[1, 2]")


@pytest.mark.parametrize(("name", "provider"), [
    ("github-push", "github"), ("gitlab-push", "gitlab"), ("gitea-push", "gitea"),
    ("forgejo-push", "forgejo"), ("bitbucket-push", "bitbucket"), ("generic-push", "generic"),
])
def test_detect_provider(name: str, provider: str) -> None:
    assert detect_provider(delivery(name)[0]) == provider


def test_detect_provider_unknown() -> None:
    assert detect_provider({"Content-Type": "application/json"}) is None


# --------------------------------------------------------------------------- giturls


@pytest.mark.parametrize("url", [
    "git@github.com:Org/Repo.git",
    "https://github.com/org/repo",
    "ssh://git@github.com/org/repo.git",
    "git://github.com/org/repo.git",
    "https://user:tok@github.com/org/repo.git/",
    "ssh://git@github.com:22/org/repo",
    "https://GitHub.com:443/Org/Repo.git",
    "http://github.com:80/org//repo/",
    "git+ssh://git@github.com/org/repo.git",
])
def test_normalise_forms_of_one_repository(url: str) -> None:
    assert giturls.normalise(url) == "github.com/org/repo"


def test_normalise_keeps_what_identifies_a_repository() -> None:
    assert giturls.normalise("https://git.local:8443/a/b.git") == "git.local:8443/a/b"
    assert giturls.normalise("ssh://git@git.local:2222/a/b") == "git.local:2222/a/b"
    assert giturls.normalise("https://gitlab.com/group/sub/project.git") == (
        "gitlab.com/group/sub/project")
    assert giturls.normalise("/srv/git/app.git") == "/srv/git/app"
    assert giturls.normalise("file:///srv/git/app.git/") == "/srv/git/app"
    assert giturls.normalise("https://[::1]:8443/x.git") == "[::1]:8443/x"
    assert giturls.same_repository("git@github.com:org/repo", "https://github.com/ORG/Repo")
    assert not giturls.same_repository("https://github.com/org/a", "https://github.com/org/b")
    assert not giturls.same_repository("", "https://github.com/org/b")


def test_parse_and_redact() -> None:
    url = giturls.parse("https://user:tok3n@github.com/org/repo.git")
    assert (url.scheme, url.host, url.user, url.password) == ("https", "github.com", "user",
                                                             "tok3n")
    assert "tok3n" not in repr(url) and "tok3n" not in url.display()
    assert giturls.redact("https://user:tok3n@github.com/x.git") == "https://user@github.com/x.git"
    scp = giturls.parse("git@github.com:org/repo.git")
    assert (scp.is_ssh, scp.user, scp.host, scp.path) == (True, "git", "github.com",
                                                          "org/repo.git")
    assert scp.display() == "git@github.com:org/repo.git"
    assert giturls.parse("./relative/repo").is_local
    assert giturls.parse("file:///srv/r.git").is_local
    with pytest.raises(ValueError):
        giturls.parse("")
    with pytest.raises(ValueError):
        giturls.parse("ftp://example.com/repo.git")
