"""The content-addressed render cache: same inputs, same bundle, no tool run.

The render key is a digest of every input a render reads: the Git tree (or blob) ids of the
environment directory and of every path it references (kustomize bases and components, helm
values files, jsonnet imports, from ``referenced_paths``), the render settings, and the
identity of the tools (Conveyor's version and each renderer binary or library version). A tree
id changes when anything under it changes and only then, so an unchanged key means an
unchanged render. The key maps to a bundle digest in the state bucket; the bundle itself is
stored once per digest in the object store.

Known limit: a symlink inside the environment pointing to another directory of the repository
is keyed by the link, not its target (rendering refuses links leaving the repository).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.adapters import git_local
from orchestrator.errors import PermanentError
from orchestrator.rendering import referenced_paths
from orchestrator.rendering.model import RenderTools

CACHE_FORMAT = "render-key/v1"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _binary_identity(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    path = str(candidate) if os.access(candidate, os.X_OK) else shutil.which(name)
    if path is None:
        return "-"
    st = os.stat(path)
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


@cache
def tools_fingerprint() -> str:
    """Everything about this installation that can change a render's output."""
    parts = [f"conveyor={_version('conveyor')}", f"kubectl={_binary_identity('kubectl')}",
             f"kustomize={_binary_identity('kustomize')}", f"helm={_binary_identity('helm')}",
             f"helm-sdk={_version('helm-python-sdk')}", f"jsonnet={_version('jsonnet')}",
             f"jinja2={_version('Jinja2')}", f"pyyaml={_version('PyYAML')}"]
    return ";".join(parts)


def operator_tools(tools: RenderTools) -> str:
    """The operator's render choices, as they change output: the binaries' identities."""
    if tools == RenderTools():
        return ""
    kustomize = _binary_identity(tools.kustomize_binary) if tools.kustomize_binary else "-"
    helm = _binary_identity(tools.helm_binary) if tools.helm_binary else "-"
    return (f";kustomize-binary={kustomize};helm-binary={helm}"
            f";remote={','.join(sorted(tools.remote_base_hosts))}")


CACHE_PREFIX = "render."  # its entries in conveyor-state: the renderer's bus user writes only these


def cache_entry(key: str) -> str:
    """The conveyor-state key of a render key's entry (``render.rk-…``)."""
    return CACHE_PREFIX + key


def render_key(repo_path: str, sha: str, env_path: str, settings: Mapping[str, Any],
               tools: RenderTools | None = None) -> tuple[str, list[str]]:
    """The cache key of rendering ``env_path`` at ``sha``, and the paths it covers. Blocking."""
    def read(path: str) -> bytes | None:
        try:  # no blob is loaded whole to learn it is too big: the render refuses it
            return git_local.read_file(repo_path, sha, path, max_bytes=8 << 20)
        except PermanentError:
            return None

    def is_dir(path: str) -> bool:
        return git_local.is_tree(repo_path, sha, path)

    paths = sorted(referenced_paths(read, is_dir, env_path, settings) | {env_path})
    trees = {p: git_local.tree_id(repo_path, sha, p) for p in paths}
    fingerprint = tools_fingerprint() + operator_tools(tools or RenderTools())
    material = json.dumps({"format": CACHE_FORMAT, "trees": trees, "settings": settings,
                           "tools": fingerprint}, sort_keys=True, default=str)
    return "rk-" + hashlib.sha256(material.encode()).hexdigest()[:40], paths
