"""API discovery: which resource (plural, scope) serves an (apiVersion, kind).

Each group-version is fetched on first use (``/api/v1`` or ``/apis/{group}/{version}``) and
cached. A kind missing from a cached group-version, or a group-version the server did not know,
triggers one fresh fetch of that group-version: a CRD created a moment ago shows up without
reloading the rest. ``refresh()`` drops everything (``/api`` + ``/apis`` on next use of
``resources()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import PermanentError

Fetch = Callable[[str], Awaitable[dict[str, Any] | None]]   # path -> JSON, None on 404


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: tuple[str, ...] = ()

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        root = f"/api/{self.api_version}" if "/" not in self.api_version \
            else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            root += f"/namespaces/{namespace}"
        root += f"/{self.plural}"
        return f"{root}/{name}" if name else root


def gv_path(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


class Discovery:
    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._cache: dict[str, dict[str, Resource]] = {}   # apiVersion -> kind -> Resource
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def resolve(self, api_version: str, kind: str) -> Resource:
        found = self._cache.get(api_version, {}).get(kind)
        if found is not None:
            return found
        lock = self._locks.setdefault(api_version, asyncio.Lock())
        async with lock:
            found = self._cache.get(api_version, {}).get(kind)   # another caller refreshed
            if found is None:
                await self._load(api_version)
                found = self._cache[api_version].get(kind)
        if found is None:
            raise PermanentError(f'no matches for kind "{kind}" in version "{api_version}": the '
                                 "server does not serve it (is its CRD installed and "
                                 "Established?)", reason="NoKindMatch")
        return found

    async def _load(self, api_version: str) -> None:
        self.fetches += 1
        doc = await self._fetch(gv_path(api_version)) or {}
        kinds: dict[str, Resource] = {}
        for r in doc.get("resources") or ():
            if "/" in r.get("name", ""):
                continue   # subresources such as deployments/status
            kinds[r["kind"]] = Resource(api_version, r["kind"], r["name"],
                                        bool(r.get("namespaced")), tuple(r.get("verbs") or ()))
        self._cache[api_version] = kinds

    def refresh(self) -> None:
        self._cache.clear()

    async def api_versions(self) -> list[str]:
        """Every group-version the server serves (``/api`` and ``/apis``)."""
        core = await self._fetch("/api") or {}
        groups = await self._fetch("/apis") or {}
        out = list(core.get("versions") or ())
        for g in groups.get("groups") or ():
            out += [v["groupVersion"] for v in g.get("versions") or ()]
        return out
