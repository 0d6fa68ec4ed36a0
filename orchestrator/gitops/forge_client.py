"""``Forge``: one forge's pull-request API for one repository: open a pull request, keep a
comment up to date, set a commit status (``orchestrator.gitops.forge``'s doc: the calls, rate
limits, where the token may go)."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import aiohttp

from orchestrator.errors import PermanentError, TransientError
from orchestrator.gitops.forge_api import ForgeApi
from orchestrator.gitops.forge_bitbucket import BitbucketApi
from orchestrator.gitops.forge_github import GiteaApi, GitHubApi
from orchestrator.gitops.forge_gitlab import GitLabApi
from orchestrator.gitops.forge_settings import ForgeSettings, PullRequest, repo_path

API_OF: Mapping[str, Callable[[str, str], ForgeApi]] = MappingProxyType({
    "github": GitHubApi, "gitlab": GitLabApi, "gitea": GiteaApi, "bitbucket": BitbucketApi})
TIMEOUT = 30.0
MAX_PAGES = 50  # pages of a listing; a forge answering more is looping


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
        self.api: ForgeApi = API_OF.get(settings.kind, GitHubApi)(settings.api_url, self.repo)

    def _request(self, title: str, head: str, base: str, body: str
                 ) -> tuple[str, dict[str, str], dict[str, Any]]:
        auth = self.settings.auth()
        url, payload = self.api.pull_request(title, head, base, body)
        return url, auth, payload

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
        return self.api.opened(data, head, base)

    # ------------------------------------------------------------------ previews
    # GitHub and Gitea/Forgejo share these paths (Gitea's API follows GitHub's): issue
    # comments of the pull request, paged with a Link header, and commit statuses. GitLab:
    # the merge request's notes (PUT to edit) and ``/projects/:id/statuses/:sha``. Bitbucket
    # Cloud: ``/pullrequests/{id}/comments`` (``content.raw``, paged by ``next`` in the body,
    # PUT to edit) and ``/commit/{node}/statuses/build`` (one status per ``key``, posted
    # again to update it).

    def _comments(self, number: int) -> tuple[str, str, str, str]:
        """(first listing page, create URL, edit URL with ``{id}``, edit method)."""
        return self.api.comments(number)

    def _comment_body(self, body: str) -> dict[str, Any]:
        return self.api.comment_body(body)

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
        headers = self.settings.auth()
        target, payload = self.api.status(sha, context, state, description, url, ref)
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
