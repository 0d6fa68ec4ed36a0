"""Pull requests through a forge's REST API: GitHub, GitLab (merge requests), Gitea/Forgejo,
Bitbucket Cloud.

Operator settings, never the repository's (a committer must not choose where Conveyor sends
a token): ``CONVEYOR_FORGE`` (``github``, ``gitlab``, ``gitea``, ``bitbucket``; ``forgejo`` is
``gitea``), ``CONVEYOR_FORGE_API_URL`` (default ``https://api.github.com``,
``https://gitlab.com/api/v4``, ``https://api.bitbucket.org/2.0``, none for Gitea; GitHub
Enterprise is ``https://HOST/api/v3``), ``CONVEYOR_FORGE_TOKEN`` or
``CONVEYOR_FORGE_TOKEN_FILE`` (re-read at each request), ``CONVEYOR_FORGE_USERNAME`` (Bitbucket
only: with it the token is an app password / API token sent as HTTP Basic ``username:token``;
without it, a repository/workspace access token sent as ``Bearer``), and
``CONVEYOR_FORGE_REPO`` (``owner/name``, Bitbucket ``workspace/repo_slug``; default: the path of
the source URL without ``.git``).

The calls, from each forge's published REST reference:

- GitHub: ``POST /repos/{owner}/{repo}/pulls`` ``{title, head, base, body}`` -> 201
  ``{number, html_url}``; ``Authorization: Bearer``; ``X-GitHub-Api-Version: 2022-11-28``.
- GitLab: ``POST /projects/{url-encoded path}/merge_requests`` ``{source_branch,
  target_branch, title, description}`` -> 201 ``{iid, web_url}``; ``PRIVATE-TOKEN``.
- Gitea/Forgejo: ``POST /repos/{owner}/{repo}/pulls`` ``{head, base, title, body}`` -> 201
  ``{number, html_url}``; ``Authorization: token``.
- Bitbucket Cloud: ``POST /repositories/{workspace}/{repo_slug}/pullrequests`` ``{title,
  description, source: {branch: {name}}, destination: {branch: {name}},
  close_source_branch}`` -> 201 ``{id, links: {html: {href}}}``. Errors are
  ``{"type": "error", "error": {"message": ...}}``. Bitbucket Server / Data Center (another
  API, ``/rest/api/1.0``) is not supported.

Listing open pull requests (for the ``pullRequests`` environment generator):

- GitHub: ``GET /repos/{owner}/{repo}/pulls?state=open&per_page=100``, next page by the
  ``Link: <...>; rel="next"`` header; ``head.ref``, ``head.sha``, ``head.repo.full_name``
  (a fork when it is not the repository), ``base.ref``, ``labels[].name``, ``updated_at``.
- GitLab: ``GET /projects/{path}/merge_requests?state=opened&per_page=100&page=N``, next page
  by ``X-Next-Page``; ``iid``, ``source_branch``, ``sha``, ``target_branch``, ``labels`` (names),
  ``updated_at``, ``source_project_id`` vs ``target_project_id`` (a fork when they differ).
- Gitea/Forgejo: ``GET /repos/{owner}/{repo}/pulls?state=open&limit=50&page=N`` until a short
  page; fields as GitHub's.
- Bitbucket Cloud: ``GET /repositories/{ws}/{slug}/pullrequests?state=OPEN&pagelen=50``, a
  page ``{values, next}`` followed by its ``next`` URL; ``id``, ``source.branch.name``,
  ``source.commit.hash`` (Bitbucket gives 12 hex digits, not 40),
  ``source.repository.full_name`` (a fork when it is not the repository),
  ``destination.branch.name``, ``updated_on``. Bitbucket has no labels: a ``labels:`` filter
  selects no Bitbucket pull request.

Pull requests from forks are never listed: their head is not in the watched repository, and
deploying a stranger's branch is the operator's decision, not a generator's.

A rate-limited answer (429, or 403 with ``x-ratelimit-remaining: 0``) is
``TransientError(reason="RateLimited", delay=Retry-After or the reset time, else 60 s)``
(Bitbucket's 429 names neither: its limits are per rolling hour); refused
credentials are ``PermanentError("AuthenticationFailed")``; other refusals name the forge's
message. The token never appears in an error or a log, and goes only to the API's own scheme,
host and port: a next page (``Link`` or Bitbucket's ``next``) elsewhere is refused.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.domain.giturls import parse
from orchestrator.errors import PermanentError, TransientError

KINDS = ("github", "gitlab", "gitea", "bitbucket")
DEFAULT_API = {"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4",
               "bitbucket": "https://api.bitbucket.org/2.0"}
# the ``set_status`` states (GitHub's words) as Bitbucket names them
BITBUCKET_STATES = {"success": "SUCCESSFUL", "failure": "FAILED", "error": "FAILED",
                    "pending": "INPROGRESS"}
TIMEOUT = 30.0
MAX_PAGES = 50  # pages of a listing; a forge answering more is looping


@dataclass(frozen=True, slots=True)
class PullRequest:
    number: int
    url: str
    head: str
    base: str

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "url": self.url, "head": self.head, "base": self.base}


@dataclass(frozen=True, slots=True)
class ForgeSettings:
    kind: str
    api_url: str
    repo: str = ""  # owner/name; "" = from the source URL
    token: str | None = field(default=None, repr=False)
    token_file: str = ""
    username: str = ""  # Bitbucket: Basic auth with an app password / API token

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> ForgeSettings | None:
        env = os.environ if environ is None else environ
        kind = (env.get("CONVEYOR_FORGE") or "").strip().lower()
        if not kind:
            return None
        kind = "gitea" if kind == "forgejo" else kind
        if kind not in KINDS:
            raise PermanentError(f"CONVEYOR_FORGE={kind!r}: one of github, gitlab, gitea, "
                                 "forgejo, bitbucket", reason="InvalidForge")
        api = (env.get("CONVEYOR_FORGE_API_URL") or DEFAULT_API.get(kind, "")).rstrip("/")
        if not api:
            raise PermanentError(f"CONVEYOR_FORGE={kind} needs CONVEYOR_FORGE_API_URL (e.g. "
                                 "https://gitea.example.org/api/v1)", reason="InvalidForge")
        return ForgeSettings(kind, api, (env.get("CONVEYOR_FORGE_REPO") or "").strip("/"),
                             env.get("CONVEYOR_FORGE_TOKEN") or None,
                             env.get("CONVEYOR_FORGE_TOKEN_FILE") or "",
                             (env.get("CONVEYOR_FORGE_USERNAME") or "").strip())

    def read_token(self) -> str:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise PermanentError(f"cannot read CONVEYOR_FORGE_TOKEN_FILE: {exc.strerror}",
                                     reason="InvalidForge") from None
        if not self.token:
            raise PermanentError("no forge token: set CONVEYOR_FORGE_TOKEN or "
                                 "CONVEYOR_FORGE_TOKEN_FILE", reason="InvalidForge")
        return self.token

    def auth(self) -> dict[str, str]:
        """The headers that carry the token, as this forge expects them."""
        token = self.read_token()
        if self.kind == "github":
            return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28"}
        if self.kind == "gitlab":
            return {"PRIVATE-TOKEN": token}
        if self.kind == "bitbucket":
            if self.username:
                basic = base64.b64encode(f"{self.username}:{token}".encode()).decode()
                return {"Authorization": f"Basic {basic}", "Accept": "application/json"}
            return {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return {"Authorization": f"token {token}"}


def repo_path(settings: ForgeSettings, source_url: str) -> str:
    if settings.repo:
        return settings.repo
    try:
        path = parse(source_url).path
    except ValueError:
        path = source_url
    path = path.strip("/").removesuffix(".git")
    if path.count("/") < 1:
        raise PermanentError(f"cannot tell the forge repository from {source_url!r}: set "
                             "CONVEYOR_FORGE_REPO=owner/name", reason="InvalidForge")
    return path


def _rate_limit_delay(status: int, headers: Mapping[str, str]) -> float | None:
    remaining = headers.get("x-ratelimit-remaining") or headers.get("ratelimit-remaining")
    if status != 429 and not (status == 403 and remaining == "0"):
        return None
    retry = headers.get("retry-after")
    if retry and retry.isdigit():
        return float(retry)
    reset = headers.get("x-ratelimit-reset") or headers.get("ratelimit-reset")
    if reset and reset.isdigit():
        return max(1.0, float(reset) - time.time())
    return 60.0


class Forge:
    """One forge's pull-request API for one repository."""

    def __init__(self, settings: ForgeSettings, source_url: str) -> None:
        self.settings = settings
        self.repo = repo_path(settings, source_url)

    def _request(self, title: str, head: str, base: str, body: str
                 ) -> tuple[str, dict[str, str], dict[str, Any]]:
        s, auth = self.settings, self.settings.auth()
        owner, _, name = self.repo.partition("/")
        if s.kind == "gitlab":
            project = urllib.parse.quote(self.repo, safe="")
            return (f"{s.api_url}/projects/{project}/merge_requests", auth,
                    {"source_branch": head, "target_branch": base, "title": title,
                     "description": body, "remove_source_branch": True})
        if s.kind == "bitbucket":
            return (f"{s.api_url}/repositories/{owner}/{name}/pullrequests", auth,
                    {"title": title, "description": body,
                     "source": {"branch": {"name": head}},
                     "destination": {"branch": {"name": base}}, "close_source_branch": True})
        return (f"{s.api_url}/repos/{owner}/{name}/pulls", auth,
                {"title": title, "head": head, "base": base, "body": body})

    async def _call(self, method: str, url: str, *, headers: Mapping[str, str],
                    payload: Any = None) -> tuple[int, Any, dict[str, str]]:
        """One request; rate limits and refused tokens raised here, the rest returned."""
        where = f"{self.settings.kind} {self.repo}"
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session, \
                    session.request(method, url, json=payload, headers={
                        **headers, "User-Agent": "conveyor"}) as resp:
                status = resp.status
                try:
                    data: Any = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                answer_headers = {k.lower(): v for k, v in resp.headers.items()}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{where}: the forge API at {self.settings.api_url} did not "
                                 f"answer ({type(exc).__name__})", reason="Unreachable") from None
        delay = _rate_limit_delay(status, answer_headers)
        if delay is not None:
            raise TransientError(f"{where}: rate-limited by the forge API; retry in "
                                 f"{int(delay)} s", reason="RateLimited", delay=delay)
        if status == 401:
            raise PermanentError(f"{where}: the forge refused the token (401)",
                                 reason="AuthenticationFailed")
        return status, data, answer_headers

    def follow(self, url: str) -> str:
        """A next-page URL the forge answered, refused unless it is on the API's own scheme,
        host and port: the token goes only where the operator pointed it."""
        want, got = urllib.parse.urlsplit(self.settings.api_url), urllib.parse.urlsplit(url)
        if (got.scheme, got.netloc) != (want.scheme, want.netloc):
            raise PermanentError(f"{self.settings.kind} {self.repo}: the forge's next page is "
                                 f"on another host ({got.scheme}://{got.hostname}); not "
                                 "followed with the token", reason="PullRequestListFailed")
        return url

    def _failed(self, what: str, status: int, data: Any) -> PermanentError:
        message = data.get("message") if isinstance(data, Mapping) else ""
        error = data.get("error") if isinstance(data, Mapping) else None
        if not message and isinstance(error, Mapping):  # Bitbucket: {"type": "error", ...}
            message = error.get("message")
        return PermanentError(f"{self.settings.kind} {self.repo}: {what} failed ({status}: "
                              f"{message or 'no message'})", reason="PullRequestFailed")

    async def open(self, *, title: str, head: str, base: str, body: str) -> PullRequest:
        url, headers, payload = self._request(title, head, base, body)
        status, data, _ = await self._call("POST", url, headers=headers, payload=payload)
        if status not in (200, 201) or not isinstance(data, Mapping):
            raise self._failed("opening the pull request", status, data)
        if self.settings.kind == "gitlab":
            return PullRequest(int(data["iid"]), str(data.get("web_url") or ""), head, base)
        if self.settings.kind == "bitbucket":
            html = (data.get("links") or {}).get("html") or {}
            return PullRequest(int(data["id"]), str(html.get("href") or ""), head, base)
        return PullRequest(int(data["number"]), str(data.get("html_url") or ""), head, base)

    # ------------------------------------------------------------------ previews
    # GitHub and Gitea/Forgejo share these paths (Gitea's API follows GitHub's): issue
    # comments of the pull request, paged with a Link header, and commit statuses. GitLab:
    # the merge request's notes (PUT to edit) and ``/projects/:id/statuses/:sha``. Bitbucket
    # Cloud: ``/pullrequests/{id}/comments`` (``content.raw``, paged by ``next`` in the body,
    # PUT to edit) and ``/commit/{node}/statuses/build`` (one status per ``key``, posted
    # again to update it).

    def _comments(self, number: int) -> tuple[str, str, str, str]:
        """(first listing page, create URL, edit URL with ``{id}``, edit method)."""
        api, repo = self.settings.api_url, self.repo
        if self.settings.kind == "gitlab":
            notes = (f"{api}/projects/{urllib.parse.quote(repo, safe='')}/merge_requests/"
                     f"{number}/notes")
            return f"{notes}?per_page=100", notes, notes + "/{id}", "PUT"
        if self.settings.kind == "bitbucket":
            comments = f"{api}/repositories/{repo}/pullrequests/{number}/comments"
            return f"{comments}?pagelen=100", comments, comments + "/{id}", "PUT"
        page = "limit=50" if self.settings.kind == "gitea" else "per_page=100"
        return (f"{api}/repos/{repo}/issues/{number}/comments?{page}",
                f"{api}/repos/{repo}/issues/{number}/comments",
                f"{api}/repos/{repo}/issues/comments/{{id}}", "PATCH")

    def _comment_body(self, body: str) -> dict[str, Any]:
        return {"content": {"raw": body}} if self.settings.kind == "bitbucket" else {
            "body": body}

    @staticmethod
    def _text(comment: Mapping[str, Any]) -> str:
        content = comment.get("content")
        if isinstance(content, Mapping):  # Bitbucket
            return "" if comment.get("deleted") else str(content.get("raw") or "")
        return str(comment.get("body") or "")

    async def upsert_comment(self, number: int, body: str, marker: str) -> tuple[int, bool]:
        """The pull request's comment (GitLab: note) holding ``marker``, updated to ``body``
        (created when there is none). Every page is read (``Link: rel="next"``; Bitbucket:
        ``next`` of the page). Returns (comment id, created)."""
        headers = self.settings.auth()
        url: str | None
        url, create, edit_url, edit = self._comments(number)
        found: int | None = None
        for _ in range(MAX_PAGES):
            if url is None or found is not None:
                break
            status, data, answer = await self._call("GET", url, headers=headers)
            values = data.get("values") if isinstance(data, Mapping) else data
            if status != 200 or not isinstance(values, list):
                raise self._failed("listing the comments", status, data)
            found = next((int(c["id"]) for c in values if isinstance(c, Mapping)
                          and marker in self._text(c)), None)
            nxt = str(data.get("next") or "") if isinstance(data, Mapping) else \
                _next_link(answer.get("link", ""))
            url = self.follow(nxt) if nxt else None
        if found is not None:
            status, data, _ = await self._call(edit, edit_url.format(id=found), headers=headers,
                                               payload=self._comment_body(body))
            if status not in (200, 201):
                raise self._failed("updating the comment", status, data)
            return found, False
        status, data, _ = await self._call("POST", create, headers=headers,
                                           payload=self._comment_body(body))
        if status != 201 or not isinstance(data, Mapping):
            raise self._failed("commenting", status, data)
        return int(data["id"]), True

    async def set_status(self, sha: str, context: str, state: str, description: str,
                         url: str = "", ref: str = "") -> None:
        """A commit status; ``state`` is GitHub's (success, failure, error, pending), named
        as each forge names it. ``url`` links the status to the pull request (Bitbucket
        requires one); ``ref``, the pull request's source branch, is Bitbucket's
        ``refname``, without which the status is not shown on the pull request."""
        api, headers = self.settings.api_url, self.settings.auth()
        kind = self.settings.kind
        if kind == "gitlab":
            gitlab_state = {"failure": "failed", "error": "failed"}.get(state, state)
            target = f"{api}/projects/{urllib.parse.quote(self.repo, safe='')}/statuses/{sha}"
            payload: dict[str, Any] = {"state": gitlab_state, "name": context,
                                       "description": description}
        elif kind == "bitbucket":
            target = f"{api}/repositories/{self.repo}/commit/{sha}/statuses/build"
            payload = {"key": context, "name": context, "description": description,
                       "state": BITBUCKET_STATES.get(state, state.upper()),
                       "url": url or f"https://bitbucket.org/{self.repo}/commits/{sha}"}
            if ref:
                payload["refname"] = ref
        else:
            target = f"{api}/repos/{self.repo}/statuses/{sha}"
            payload = {"state": state, "context": context, "description": description}
            if url:
                payload["target_url"] = url
        status, data, _ = await self._call("POST", target, headers=headers, payload=payload)
        if status not in (200, 201):
            raise self._failed(f"setting the status {context}", status, data)


def _next_link(header: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header (RFC 8288), if any."""
    for part in header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


def _epoch(value: Any) -> float:
    """An ISO 8601 time (``2026-12-01T10:00:00Z``) as seconds since the epoch; 0 unknown."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0



class PullLister:
    """The open pull requests of one repository, page by page, forks left out. The forge is
    resolved on first use, so a forge set up only for releases costs nothing here."""

    def __init__(self, settings: ForgeSettings, source_url: str) -> None:
        self.settings, self.source_url = settings, source_url
        self._forge: Forge | None = None

    @property
    def forge(self) -> Forge:
        if self._forge is None:
            self._forge = Forge(self.settings, self.source_url)
        return self._forge

    def _first(self) -> tuple[str, dict[str, str]]:
        s, auth = self.forge.settings, self.forge.settings.auth()
        owner, _, name = self.forge.repo.partition("/")
        if s.kind == "github":
            return f"{s.api_url}/repos/{owner}/{name}/pulls?state=open&per_page=100", auth
        if s.kind == "gitlab":
            project = urllib.parse.quote(self.forge.repo, safe="")
            return (f"{s.api_url}/projects/{project}/merge_requests?state=opened&per_page=100"
                    "&page=1", auth)
        if s.kind == "bitbucket":
            return (f"{s.api_url}/repositories/{owner}/{name}/pullrequests?state=OPEN"
                    "&pagelen=50", auth)
        return f"{s.api_url}/repos/{owner}/{name}/pulls?state=open&limit=50&page=1", auth

    def _pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        if self.forge.settings.kind == "bitbucket":
            source, target = raw.get("source") or {}, raw.get("destination") or {}
            repo = (source.get("repository") or {}).get("full_name")
            if repo and str(repo).lower() != self.forge.repo.lower():
                return None
            return OpenPull(int(raw["id"]), str((source.get("branch") or {}).get("name") or ""),
                            str((target.get("branch") or {}).get("name") or ""),
                            str((source.get("commit") or {}).get("hash") or ""), (),
                            _epoch(raw.get("updated_on")))
        if self.forge.settings.kind == "gitlab":
            if raw.get("source_project_id") != raw.get("target_project_id"):
                return None
            labels = [str(x) for x in raw.get("labels") or [] if isinstance(x, str)]
            return OpenPull(int(raw["iid"]), str(raw["source_branch"]),
                            str(raw["target_branch"]), str(raw.get("sha") or ""),
                            tuple(labels), _epoch(raw.get("updated_at")))
        head, base = raw.get("head") or {}, raw.get("base") or {}
        repo = (head.get("repo") or {}).get("full_name") if isinstance(head, Mapping) else None
        if repo and str(repo).lower() != self.forge.repo.lower():
            return None
        labels = [str(x.get("name")) for x in raw.get("labels") or []
                  if isinstance(x, Mapping) and x.get("name")]
        return OpenPull(int(raw["number"]), str(head.get("ref") or ""), str(base.get("ref") or ""),
                        str(head.get("sha") or ""), tuple(labels), _epoch(raw.get("updated_at")))

    def _next(self, url: str, headers: Mapping[str, str], count: int,
              data: Any = None) -> str | None:
        kind = self.forge.settings.kind
        if kind == "bitbucket":
            nxt = data.get("next") if isinstance(data, Mapping) else None
            return str(nxt) if nxt else None
        if kind == "github":
            for part in headers.get("link", "").split(","):
                target, _, rel = part.partition(";")
                if 'rel="next"' in rel:
                    return target.strip().strip("<>")
            return None
        page = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("page",
                                                                               ["1"])[0])
        if kind == "gitlab":
            nxt = headers.get("x-next-page", "")
            return url.replace(f"page={page}", f"page={nxt}") if nxt.isdigit() else None
        return url.replace(f"page={page}", f"page={page + 1}") if count >= 50 else None

    async def open_pulls(self) -> list[OpenPull]:
        url, auth = self._first()
        where = f"{self.forge.settings.kind} {self.forge.repo}"
        out: list[OpenPull] = []
        for _ in range(MAX_PAGES):
            # rate limits, refused tokens and an unreachable forge are raised by the call
            status, data, headers = await self.forge._call("GET", url, headers=auth)
            values = data.get("values") if isinstance(data, Mapping) else data
            if status != 200 or not isinstance(values, list):
                raise PermanentError(f"{where}: listing pull requests answered {status}",
                                     reason="PullRequestListFailed")
            for raw in values:
                if isinstance(raw, Mapping):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        pull = self._pull(raw)
                        if pull is not None and pull.branch and pull.head_sha:
                            out.append(pull)
            nxt = self._next(url, headers, len(values), data)
            if nxt is None:
                return sorted(out, key=lambda p: p.number)
            url = self.forge.follow(nxt)
        raise PermanentError(f"{where}: more than {MAX_PAGES} pages of pull requests",
                             reason="PullRequestListFailed")
