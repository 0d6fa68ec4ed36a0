"""``PullLister``: the open pull requests of one repository, for the ``pullRequests``
environment generator, forks left out (``orchestrator.gitops.forge``'s doc: the listings)."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.errors import PermanentError
from orchestrator.gitops.forge_client import MAX_PAGES, Forge
from orchestrator.gitops.forge_settings import ForgeSettings


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
