"""GitHub's pull-request API, and Gitea/Forgejo's, which follows it (paging aside)
(``orchestrator.gitops.forge``'s doc: the calls)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.gitops.forge_api import epoch
from orchestrator.gitops.forge_settings import PullRequest


class GitHubApi:
    def __init__(self, api_url: str, repo: str) -> None:
        self.api_url, self.repo = api_url, repo

    def pull_request(self, title: str, head: str, base: str,
                     body: str) -> tuple[str, dict[str, Any]]:
        owner, _, name = self.repo.partition("/")
        return (f"{self.api_url}/repos/{owner}/{name}/pulls",
                {"title": title, "head": head, "base": base, "body": body})

    def opened(self, data: Mapping[str, Any], head: str, base: str) -> PullRequest:
        return PullRequest(int(data["number"]), str(data.get("html_url") or ""), head, base)

    def _comments_page(self) -> str:
        return "per_page=100"

    def comments(self, number: int) -> tuple[str, str, str, str]:
        api, repo = self.api_url, self.repo
        return (f"{api}/repos/{repo}/issues/{number}/comments?{self._comments_page()}",
                f"{api}/repos/{repo}/issues/{number}/comments",
                f"{api}/repos/{repo}/issues/comments/{{id}}", "PATCH")

    def comment_body(self, body: str) -> dict[str, Any]:
        return {"body": body}

    def status(self, sha: str, context: str, state: str, description: str, url: str,
               ref: str) -> tuple[str, dict[str, Any]]:
        target = f"{self.api_url}/repos/{self.repo}/statuses/{sha}"
        payload: dict[str, Any] = {"state": state, "context": context,
                                   "description": description}
        if url:
            payload["target_url"] = url
        return target, payload

    def first_pulls(self) -> str:
        owner, _, name = self.repo.partition("/")
        return f"{self.api_url}/repos/{owner}/{name}/pulls?state=open&per_page=100"

    def pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        head, base = raw.get("head") or {}, raw.get("base") or {}
        repo = (head.get("repo") or {}).get("full_name") if isinstance(head, Mapping) else None
        if repo and str(repo).lower() != self.repo.lower():
            return None
        labels = [str(x.get("name")) for x in raw.get("labels") or []
                  if isinstance(x, Mapping) and x.get("name")]
        return OpenPull(int(raw["number"]), str(head.get("ref") or ""), str(base.get("ref") or ""),
                        str(head.get("sha") or ""), tuple(labels), epoch(raw.get("updated_at")))

    def next_pulls(self, url: str, headers: Mapping[str, str], count: int,
                   data: Any = None) -> str | None:
        for part in headers.get("link", "").split(","):
            target, _, rel = part.partition(";")
            if 'rel="next"' in rel:
                return target.strip().strip("<>")
        return None


class GiteaApi(GitHubApi):
    """Gitea and Forgejo: GitHub's paths, pages of 50 numbered ``page=N``."""

    def _comments_page(self) -> str:
        return "limit=50"

    def first_pulls(self) -> str:
        owner, _, name = self.repo.partition("/")
        return f"{self.api_url}/repos/{owner}/{name}/pulls?state=open&limit=50&page=1"

    def next_pulls(self, url: str, headers: Mapping[str, str], count: int,
                   data: Any = None) -> str | None:
        page = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("page",
                                                                               ["1"])[0])
        return url.replace(f"page={page}", f"page={page + 1}") if count >= 50 else None
