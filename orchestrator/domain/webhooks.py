"""Webhooks from git hosts: verify the sender, then read a push out of the payload.

Pure functions over ``(headers, body)``; the HTTP server that receives them lives elsewhere.
``verify`` must run on the raw body bytes *before* ``parse_push`` (and before any JSON parsing).

Providers and how each proves who sent the request (``secrets`` is a list so a secret can be
rotated: any one of them may match; an empty list accepts nothing):

============  =========================================  ===================================
provider      header                                     value
============  =========================================  ===================================
github        ``X-Hub-Signature-256``                    ``sha256=`` + hex HMAC-SHA256(body)
gitlab        ``X-Gitlab-Token``                         the secret token itself
gitea         ``X-Gitea-Signature``                      hex HMAC-SHA256(body), no prefix
forgejo       ``X-Forgejo-Signature`` (or ``X-Gitea-``)  hex HMAC-SHA256(body), no prefix
bitbucket     ``X-Hub-Signature``                        ``sha256=`` + hex HMAC-SHA256(body)
generic       ``X-Conveyor-Signature``                   ``sha256=`` + hex HMAC-SHA256(body)
============  =========================================  ===================================

Every comparison is constant-time (``hmac.compare_digest``); GitLab's plain token is compared
through SHA-256 digests so that not even its length leaks. GitHub's legacy SHA-1
``X-Hub-Signature`` is not accepted.

``parse_push`` returns a ``PushEvent``: ``kind`` is ``push``, ``ping`` (the host checking the
hook works) or ``other`` (an event Conveyor does not act on, a tag push included);
``repo_urls`` holds *every* URL the payload gives for the repository, so a source matches
whichever form its conveyor.yaml uses (compare with ``giturls.normalise``). ``delivery_id``
identifies the delivery for de-duplication (redeliveries keep the id where the host does).

The generic provider is Conveyor's own format, for CI systems and scripts::

    POST  X-Conveyor-Event: push | ping       X-Conveyor-Delivery: <unique id>
    {"repository": "<url>" or "repositories": ["<url>", ...],
     "ref": "refs/heads/main" or "branch": "main", "after": "<sha>", "deleted": false}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from orchestrator.domain.giturls import normalise
from orchestrator.errors import PermanentError

Provider = Literal["github", "gitlab", "gitea", "forgejo", "bitbucket", "generic"]
PROVIDERS: tuple[Provider, ...] = ("github", "gitlab", "gitea", "forgejo", "bitbucket",
                                   "generic")
Kind = Literal["push", "ping", "other"]
ZERO_SHA = "0" * 40

_HMAC_HEADERS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    # provider -> ((header, prefix), ...): any present header that verifies is enough.
    "github": (("x-hub-signature-256", "sha256="),),
    "gitea": (("x-gitea-signature", ""), ("x-forgejo-signature", "")),
    "forgejo": (("x-forgejo-signature", ""), ("x-gitea-signature", "")),
    "bitbucket": (("x-hub-signature", "sha256="),),
    "generic": (("x-conveyor-signature", "sha256="),),
})
_DELIVERY_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "github": ("x-github-delivery",),
    "gitlab": ("x-gitlab-event-uuid", "idempotency-key"),
    "gitea": ("x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"),
    "forgejo": ("x-forgejo-delivery", "x-gitea-delivery"),
    "bitbucket": ("x-request-uuid", "x-hook-uuid"),
    "generic": ("x-conveyor-delivery",),
})
# Keys under which payloads give the repository's URLs (clone, SSH, git://, web pages).
_URL_KEYS = ("clone_url", "git_url", "ssh_url", "html_url", "url", "svn_url", "mirror_url",
             "git_http_url", "git_ssh_url", "http_url", "web_url", "homepage", "original_url")


@dataclass(frozen=True, slots=True)
class RefUpdate:
    """One branch moved by a push (Bitbucket can report several in one delivery)."""

    branch: str
    after: str | None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class PushEvent:
    """What a webhook delivery says happened. ``branch``/``after``/``deleted`` describe the
    first branch update; ``updates`` lists all of them."""

    kind: Kind
    repo_urls: frozenset[str]
    branch: str | None = None
    after: str | None = None
    deleted: bool = False
    delivery_id: str | None = None
    provider: str = "generic"
    updates: tuple[RefUpdate, ...] = ()

    def matches(self, keys: Iterable[str]) -> bool:
        """True when any URL of the payload normalises to one of ``keys``."""
        wanted = set(keys)
        for url in self.repo_urls:
            try:
                if normalise(url) in wanted:
                    return True
            except ValueError:
                continue
        return False


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v.strip() for k, v in headers.items()}


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(provider: str, headers: Mapping[str, str], body: bytes,
           secrets: Sequence[str]) -> bool:
    """True when the delivery was signed (or carries the token) with one of ``secrets``."""
    h = _headers(headers)
    usable = [s for s in secrets if s]
    if not usable:
        return False
    if provider == "gitlab":
        token = h.get("x-gitlab-token")
        if not token:
            return False
        given = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(given, hashlib.sha256(s.encode()).digest())
                   for s in usable)
    if provider not in _HMAC_HEADERS:
        raise ValueError(f"unknown webhook provider {provider!r} (known: {PROVIDERS})")
    for header, prefix in _HMAC_HEADERS[provider]:
        value = h.get(header)
        if not value:
            continue
        given = value.lower().encode()
        for secret in usable:
            if hmac.compare_digest(given, (prefix + _hmac_hex(secret, body)).encode()):
                return True
    return False


def sign(provider: str, body: bytes, secret: str) -> dict[str, str]:
    """The headers a sender would add: for tests and for the generic provider's clients."""
    if provider == "gitlab":
        return {"X-Gitlab-Token": secret}
    header, prefix = _HMAC_HEADERS[provider][0]
    name = "-".join(part.capitalize() for part in header.split("-"))
    return {name: prefix + _hmac_hex(secret, body)}


def detect_provider(headers: Mapping[str, str]) -> Provider | None:
    """Guess the provider from the headers alone (Gitea also sends GitHub's, so it goes first)."""
    h = _headers(headers)
    if "x-forgejo-event" in h or "x-forgejo-signature" in h:
        return "forgejo"
    if "x-gitea-event" in h or "x-gitea-signature" in h:
        return "gitea"
    if "x-gitlab-event" in h or "x-gitlab-token" in h:
        return "gitlab"
    if "x-github-event" in h:
        return "github"
    if "x-event-key" in h and ("x-hook-uuid" in h or "x-request-uuid" in h):
        return "bitbucket"
    if "x-conveyor-event" in h or "x-conveyor-signature" in h:
        return "generic"
    return None


# --------------------------------------------------------------------------- parsing


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermanentError(f"webhook body is not JSON: {exc}", reason="InvalidPayload") from None
    if not isinstance(data, dict):
        raise PermanentError("webhook body must be a JSON object", reason="InvalidPayload")
    return data


def _urls(*objects: Any) -> set[str]:
    """Every URL-valued key of ``objects`` (dicts), plus Bitbucket-style ``links.*.href``."""
    found: set[str] = set()
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        for key in _URL_KEYS:
            value = obj.get(key)
            if isinstance(value, str) and value.strip():
                found.add(value.strip())
        links = obj.get("links")
        if isinstance(links, dict):
            for name in ("html", "clone"):
                link = links.get(name)
                for item in link if isinstance(link, list) else [link]:
                    if isinstance(item, dict) and isinstance(item.get("href"), str):
                        found.add(item["href"])
    return found


def _branch(ref: Any) -> str | None:
    if isinstance(ref, str) and ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/")
    return None


def _sha(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _delivery(provider: str, h: Mapping[str, str]) -> str | None:
    for header in _DELIVERY_HEADERS.get(provider, ()):
        if h.get(header):
            return h[header]
    return None


def _event(kind: Kind, provider: str, urls: set[str], h: Mapping[str, str],
           updates: Sequence[RefUpdate] = ()) -> PushEvent:
    first = updates[0] if updates else None
    return PushEvent(
        kind=kind, repo_urls=frozenset(urls), provider=provider,
        branch=first.branch if first else None, after=first.after if first else None,
        deleted=first.deleted if first else False, delivery_id=_delivery(provider, h),
        updates=tuple(updates))


def _github_like(provider: str, event: str, data: dict[str, Any],
                 h: Mapping[str, str]) -> PushEvent:
    urls = _urls(data.get("repository"))
    if event == "ping":
        return _event("ping", provider, urls, h)
    branch = _branch(data.get("ref"))
    if event != "push" or branch is None:
        return _event("other", provider, urls, h)
    after = _sha(data.get("after"))
    deleted = bool(data.get("deleted")) or after in (None, ZERO_SHA)
    return _event("push", provider, urls, h,
                  [RefUpdate(branch, None if deleted else after, deleted)])


def _gitlab(data: dict[str, Any], h: Mapping[str, str]) -> PushEvent:
    urls = _urls(data.get("project"), data.get("repository"))
    kind = data.get("object_kind") or data.get("event_name")
    branch = _branch(data.get("ref"))
    if kind == "push" and branch is not None:
        after = _sha(data.get("after"))
        deleted = after in (None, ZERO_SHA)
        return _event("push", "gitlab", urls, h,
                      [RefUpdate(branch, None if deleted else after, deleted)])
    if h.get("x-gitlab-event") == "System Hook" and kind is None:
        return _event("ping", "gitlab", urls, h)  # a system hook's connectivity test
    return _event("other", "gitlab", urls, h)


def _bitbucket(data: dict[str, Any], h: Mapping[str, str]) -> PushEvent:
    event = h.get("x-event-key", "")
    repo = data.get("repository")
    urls = _urls(repo)
    if isinstance(repo, dict) and isinstance(repo.get("full_name"), str):
        urls.add(f"https://bitbucket.org/{repo['full_name']}")
    if event == "diagnostics:ping":
        return _event("ping", "bitbucket", urls, h)
    if event != "repo:push":
        return _event("other", "bitbucket", urls, h)
    updates: list[RefUpdate] = []
    push = data.get("push")
    changes = push.get("changes") if isinstance(push, dict) else None
    for change in changes if isinstance(changes, list) else []:
        if not isinstance(change, dict):
            continue
        new, old = change.get("new"), change.get("old")
        ref = new if isinstance(new, dict) else old
        if not isinstance(ref, dict) or ref.get("type") not in ("branch", "named_branch"):
            continue  # tags
        name = ref.get("name")
        if not isinstance(name, str):
            continue
        if isinstance(new, dict):
            target = new.get("target")
            sha = _sha(target.get("hash")) if isinstance(target, dict) else None
            updates.append(RefUpdate(name, sha, False))
        else:
            updates.append(RefUpdate(name, None, True))
    return _event("push" if updates else "other", "bitbucket", urls, h, updates)


def _generic(data: dict[str, Any], h: Mapping[str, str]) -> PushEvent:
    urls: set[str] = set()
    if isinstance(data.get("repository"), str):
        urls.add(data["repository"])
    urls.update(u for u in data.get("repositories") or [] if isinstance(u, str))
    event = h.get("x-conveyor-event") or data.get("event") or "push"
    if event == "ping":
        return _event("ping", "generic", urls, h)
    branch = _branch(data.get("ref")) or (data.get("branch") if isinstance(
        data.get("branch"), str) and data.get("branch") else None)
    if event != "push" or branch is None:
        return _event("other", "generic", urls, h)
    after = _sha(data.get("after"))
    deleted = bool(data.get("deleted")) or after == ZERO_SHA
    return _event("push", "generic", urls, h,
                  [RefUpdate(branch, None if deleted else after, deleted)])


def parse_push(provider: str, headers: Mapping[str, str], body: bytes) -> PushEvent:
    """Read a delivery; raises PermanentError("InvalidPayload") for a body that is not JSON."""
    h = _headers(headers)
    if provider == "github":
        return _github_like("github", h.get("x-github-event", ""), _load(body), h)
    if provider in ("gitea", "forgejo"):
        event = (h.get("x-forgejo-event") or h.get("x-gitea-event")
                 or h.get("x-gogs-event") or "")
        return _github_like(provider, event, _load(body), h)
    if provider == "gitlab":
        return _gitlab(_load(body), h)
    if provider == "bitbucket":
        return _bitbucket(_load(body), h)
    if provider == "generic":
        return _generic(_load(body), h)
    raise ValueError(f"unknown webhook provider {provider!r} (known: {PROVIDERS})")
