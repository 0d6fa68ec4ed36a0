"""What a kustomization file refers to: pure, shared by the render pre-check and the watcher.

Fields read (kustomize v5): ``resources``, ``bases``, ``components``, ``crds``,
``configurations``, ``generators``, ``transformers``, ``validators``, ``patches[].path``,
``patchesStrategicMerge`` (file entries), ``patchesJson6902[].path``, ``replacements[].path``,
``configMapGenerator``/``secretGenerator`` ``files``/``envs``/``env``, ``openapi.path``,
``helmGlobals.chartHome`` and ``helmCharts[].valuesFile``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.yamlpos import Document

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_REMOTE_HOSTS = ("github.com/", "gitlab.com/", "bitbucket.org/", "dev.azure.com/")


def is_remote(ref: str) -> bool:
    """Does kustomize treat ``ref`` as a remote base (URL, git, a forge host)?"""
    return bool(_SCHEME.match(ref)) or ref.startswith(("git::", "git@", "ssh:")) \
        or ref.startswith(_REMOTE_HOSTS) or "?ref=" in ref


_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):")


def remote_host(ref: str) -> str | None:
    """The host a remote base would be fetched from (lowercase), or None when unclear."""
    rest = ref.removeprefix("git::")
    if _SCHEME.match(rest):
        host = urllib.parse.urlsplit(rest).hostname
        return host.lower() if host else None
    scp = _SCP.match(rest)  # git@github.com:org/repo
    if scp and "@" in rest.split(":", 1)[0]:
        return scp.group(1).lower()
    first = rest.split("/", 1)[0].split("?", 1)[0]
    return first.lower() if "." in first else None


@dataclass(frozen=True, slots=True)
class Ref:
    """One path a kustomization mentions; ``kind`` is "any" (file or dir), "dir" or "file"."""

    value: str
    kind: str
    path: tuple[str | int, ...]  # where in the kustomization document, for positions


def _strings(value: Any) -> Iterator[tuple[int, str]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield i, item


def _inline(text: str) -> bool:
    return "\n" in text or text.lstrip().startswith(("{", "-"))


def refs_of(data: Any) -> list[Ref]:
    """Every local-or-remote path reference in a parsed kustomization."""
    if not isinstance(data, dict):
        return []
    out: list[Ref] = []
    for field, kind in (("resources", "any"), ("bases", "dir"), ("components", "dir"),
                        ("crds", "file"), ("configurations", "file"), ("generators", "any"),
                        ("transformers", "any"), ("validators", "any")):
        for i, item in _strings(data.get(field)):
            if not _inline(item):
                out.append(Ref(item, kind, (field, i)))
    for i, item in _strings(data.get("patchesStrategicMerge")):
        if not _inline(item):
            out.append(Ref(item, "file", ("patchesStrategicMerge", i)))
    for field in ("patches", "patchesJson6902", "replacements"):
        entries = data.get(field)
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    out.append(Ref(entry["path"], "file", (field, i, "path")))
    for field in ("configMapGenerator", "secretGenerator"):
        entries = data.get(field)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            for j, item in _strings(entry.get("files")):
                # "key=path" or "path"
                path = item.split("=", 1)[1] if "=" in item else item
                out.append(Ref(path, "file", (field, i, "files", j)))
            for j, item in _strings(entry.get("envs")):
                out.append(Ref(item, "file", (field, i, "envs", j)))
            if isinstance(entry.get("env"), str):
                out.append(Ref(entry["env"], "file", (field, i, "env")))
    openapi = data.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        out.append(Ref(openapi["path"], "file", ("openapi", "path")))
    globals_ = data.get("helmGlobals")
    if isinstance(globals_, dict) and isinstance(globals_.get("chartHome"), str):
        out.append(Ref(globals_["chartHome"], "dir", ("helmGlobals", "chartHome")))
    charts = data.get("helmCharts")
    if isinstance(charts, list):
        for i, chart in enumerate(charts):
            if isinstance(chart, dict) and isinstance(chart.get("valuesFile"), str):
                out.append(Ref(chart["valuesFile"], "file", ("helmCharts", i, "valuesFile")))
    return out


def where(doc: Document | None, file: str, ref: Ref) -> str:
    return str(doc.where(*ref.path)) if doc is not None else file
