"""GitLab's merge-request API (``orchestrator.gitops.forge``'s doc: the calls)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.gitops.forge_api import epoch
from orchestrator.gitops.forge_settings import PullRequest


class GitLabApi:
    def __init__(self, api_url: str, repo: str) -> None:
        self.api_url, self.repo = api_url, repo
        self.project = urllib.parse.quote(repo, safe="")

    def pull_request(self, title: str, head: str, base: str,
                     body: str) -> tuple[str, dict[str, Any]]:
        return (f"{self.api_url}/projects/{self.project}/merge_requests",
                {"source_branch": head, "target_branch": base, "title": title,
                 "description": body, "remove_source_branch": True})

    def opened(self, data: Mapping[str, Any], head: str, base: str) -> PullRequest:
        return PullRequest(int(data["iid"]), str(data.get("web_url") or ""), head, base)

    def comments(self, number: int) -> tuple[str, str, str, str]:
        notes = f"{self.api_url}/projects/{self.project}/merge_requests/{number}/notes"
        return f"{notes}?per_page=100", notes, notes + "/{id}", "PUT"

    def comment_body(self, body: str) -> dict[str, Any]:
        return {"body": body}

    def status(self, sha: str, context: str, state: str, description: str, url: str,
               ref: str) -> tuple[str, dict[str, Any]]:
        gitlab_state = {"failure": "failed", "error": "failed"}.get(state, state)
        return (f"{self.api_url}/projects/{self.project}/statuses/{sha}",
                {"state": gitlab_state, "name": context, "description": description})

    def first_pulls(self) -> str:
        return (f"{self.api_url}/projects/{self.project}/merge_requests?state=opened"
                "&per_page=100&page=1")

    def pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        if raw.get("source_project_id") != raw.get("target_project_id"):
            return None
        labels = [str(x) for x in raw.get("labels") or [] if isinstance(x, str)]
        return OpenPull(int(raw["iid"]), str(raw["source_branch"]),
                        str(raw["target_branch"]), str(raw.get("sha") or ""),
                        tuple(labels), epoch(raw.get("updated_at")))

    def next_pulls(self, url: str, headers: Mapping[str, str], count: int,
                   data: Any = None) -> str | None:
        page = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("page",
                                                                               ["1"])[0])
        nxt = headers.get("x-next-page", "")
        return url.replace(f"page={page}", f"page={nxt}") if nxt.isdigit() else None
