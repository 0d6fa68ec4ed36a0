"""GitHub commit statuses: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``.

Each environment is one status context, ``conveyor/<env>``, on the commit the event is about
(its correlation id), moving ``pending`` -> ``success`` | ``failure`` | ``error``. GitHub has no
"cancelled": a superseded commit gets ``error`` with a description saying it was superseded,
because it was never applied. Descriptions are cut to GitHub's 140 characters.

Rate limits arrive as 429, or as 403 with ``Retry-After`` or ``x-ratelimit-remaining: 0``;
both are retried. Any other 4xx (a bad token, an unknown commit) is permanent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import quote

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.notify.message import (
    Answer,
    Message,
    Request,
    Response,
    json_request,
    read_http,
    retry_after_seconds,
)
from orchestrator.notify.providers.base import (
    commit_sha,
    config_error,
    http_url,
    optional,
    repo_path,
    setting,
    status_context,
    status_description,
)

DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"

STATES: Mapping[str, str] = MappingProxyType({
    ev.COMMIT_DETECTED: "pending",
    ev.RENDER_SUCCEEDED: "pending",
    ev.APPLY_STARTED: "pending",
    ev.APPLY_RETRYING: "pending",
    ev.HEALTH_PROGRESSING: "pending",
    ev.APPLY_SUCCEEDED: "success",
    ev.APPLY_SKIPPED: "success",
    ev.HEALTH_HEALTHY: "success",
    ev.RENDER_FAILED: "failure",
    ev.APPLY_FAILED: "failure",
    ev.HEALTH_DEGRADED: "failure",
    ev.COMMIT_REJECTED: "failure",
    ev.CONFIG_INVALID: "failure",
    ev.RENDER_DEAD: "error",
    ev.APPLY_DEAD: "error",
    ev.APPLY_SUPERSEDED: "error",
})


@dataclass(frozen=True, slots=True)
class GitHubStatus:
    token: str
    repo: str = ""  # owner/name; empty means "from the event's repo_url"
    api: str = DEFAULT_API
    context: str = "conveyor"
    kind: ClassVar[str] = "github"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> GitHubStatus:
        return cls(
            token=setting(settings, "token", "github", name=name),
            repo=optional(settings, "repo").strip("/"),
            api=http_url(settings, "api", "github", name=name, default=DEFAULT_API).rstrip("/"),
            context=optional(settings, "context", "conveyor"),
        )

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        repo = self.repo or repo_path(str(event.data.get("repo_url") or ""))
        owner, _, name = repo.partition("/")
        if not owner or not name or "/" in name:
            raise config_error("github notifier needs 'repo' as owner/name (the event's "
                               "repo_url did not name a GitHub repository)", "repo")
        sha = commit_sha(event)
        payload: dict[str, Any] = {
            "state": STATES.get(event.type, "pending"),
            "context": status_context(event, self.context),
            "description": status_description(message, event, 140),
        }
        if message.link.startswith(("http://", "https://")):
            payload["target_url"] = message.link
        url = (f"{self.api}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
               f"/statuses/{quote(sha, safe='')}")
        return json_request("POST", url, payload, headers={
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "conveyor",
        })

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        answer = read_http(response, now=now)
        if response.status != 403:
            return answer
        delay = retry_after_seconds(response, now=now)
        if delay is None and response.headers.get("x-ratelimit-remaining") == "0":
            reset = response.headers.get("x-ratelimit-reset", "")
            if reset.isdigit() and now is not None:
                delay = max(0.0, float(reset) - now)
            return Answer(ok=False, detail=answer.detail, retryable=True, retry_after=delay)
        if delay is not None:  # a secondary rate limit
            return Answer(ok=False, detail=answer.detail, retryable=True, retry_after=delay)
        return answer


def accepts(event: Event) -> bool:
    """Only events that say something about a commit's deployment become statuses."""
    return event.type in STATES and bool(commit_sha(event))
