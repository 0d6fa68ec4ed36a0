"""``PullLister``: the open pull requests of one repository, for the ``pullRequests``
environment generator, forks left out (``orchestrator.gitops.forge``'s doc: the listings)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.errors import PermanentError
from orchestrator.gitops.forge_client import MAX_PAGES, Forge
from orchestrator.gitops.forge_settings import ForgeSettings


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
        auth = self.forge.settings.auth()
        return self.forge.api.first_pulls(), auth

    def _pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        return self.forge.api.pull(raw)

    def _next(self, url: str, headers: Mapping[str, str], count: int,
              data: Any = None) -> str | None:
        return self.forge.api.next_pulls(url, headers, count, data)

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
