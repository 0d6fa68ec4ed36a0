"""Bitbucket Cloud's pull-request API (``orchestrator.gitops.forge``'s doc: the calls)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.gitops.forge_api import epoch
from orchestrator.gitops.forge_settings import PullRequest

# the ``set_status`` states (GitHub's words) as Bitbucket names them
BITBUCKET_STATES = MappingProxyType({"success": "SUCCESSFUL", "failure": "FAILED",
                                     "error": "FAILED", "pending": "INPROGRESS"})


class BitbucketApi:
    def __init__(self, api_url: str, repo: str) -> None:
        self.api_url, self.repo = api_url, repo

    def pull_request(self, title: str, head: str, base: str,
                     body: str) -> tuple[str, dict[str, Any]]:
        owner, _, name = self.repo.partition("/")
        return (f"{self.api_url}/repositories/{owner}/{name}/pullrequests",
                {"title": title, "description": body,
                 "source": {"branch": {"name": head}},
                 "destination": {"branch": {"name": base}}, "close_source_branch": True})

    def opened(self, data: Mapping[str, Any], head: str, base: str) -> PullRequest:
        html = (data.get("links") or {}).get("html") or {}
        return PullRequest(int(data["id"]), str(html.get("href") or ""), head, base)

    def comments(self, number: int) -> tuple[str, str, str, str]:
        comments = f"{self.api_url}/repositories/{self.repo}/pullrequests/{number}/comments"
        return f"{comments}?pagelen=100", comments, comments + "/{id}", "PUT"

    def comment_body(self, body: str) -> dict[str, Any]:
        return {"content": {"raw": body}}

    def status(self, sha: str, context: str, state: str, description: str, url: str,
               ref: str) -> tuple[str, dict[str, Any]]:
        target = f"{self.api_url}/repositories/{self.repo}/commit/{sha}/statuses/build"
        payload: dict[str, Any] = {
            "key": context, "name": context, "description": description,
            "state": BITBUCKET_STATES.get(state, state.upper()),
            "url": url or f"https://bitbucket.org/{self.repo}/commits/{sha}"}
        if ref:
            payload["refname"] = ref
        return target, payload

    def first_pulls(self) -> str:
        owner, _, name = self.repo.partition("/")
        return (f"{self.api_url}/repositories/{owner}/{name}/pullrequests?state=OPEN"
                "&pagelen=50")

    def pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        source, target = raw.get("source") or {}, raw.get("destination") or {}
        repo = (source.get("repository") or {}).get("full_name")
        if repo and str(repo).lower() != self.repo.lower():
            return None
        return OpenPull(int(raw["id"]), str((source.get("branch") or {}).get("name") or ""),
                        str((target.get("branch") or {}).get("name") or ""),
                        str((source.get("commit") or {}).get("hash") or ""), (),
                        epoch(raw.get("updated_on")))

    def next_pulls(self, url: str, headers: Mapping[str, str], count: int,
                   data: Any = None) -> str | None:
        nxt = data.get("next") if isinstance(data, Mapping) else None
        return str(nxt) if nxt else None
