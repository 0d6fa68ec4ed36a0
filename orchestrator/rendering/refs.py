"""Which repository paths a render of an environment reads: for change detection and caching.

Pure: it sees the repository only through ``read_file(path) -> bytes | None`` and
``is_dir(path)``, so the git-watcher can answer from a commit's tree without exporting it.
Each returned path (repo-relative, "" is the root) covers itself and everything below it; a
render's inputs changed if and only if a changed path lies under one of them (plus the
environment's settings, which the caller hashes separately).

- every renderer: the environment directory itself;
- kustomize: every local directory of the kustomization graph (resources, bases, components,
  recursively) and every file it names outside those (patches, generator files, crds, ...);
- helm: value files outside the chart directory;
- jsonnet: the entry file's imports (``import``, ``importstr``, ``importbin``), recursively,
  resolved against the importing file's directory and then ``libs``. Best effort: without a
  directory listing only ``jsonnet.main`` (default ``main.jsonnet``) is followed, and imports
  from files other than those reached from it are covered only when they lie under the
  environment directory.

Remote references are ignored, and so are paths escaping the repository (render refuses them).
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from orchestrator.errors import PermanentError
from orchestrator.rendering.kustomize_refs import KUSTOMIZATION_FILES, is_remote, refs_of
from orchestrator.rendering.safety import join_rel, norm_rel
from orchestrator.rendering.settings import RenderSettings, parse_settings

ReadFile = Callable[[str], bytes | None]
IsDir = Callable[[str], bool]

_IMPORT = re.compile(r"""\b(import|importstr|importbin)\s*(@?)(["'])((?:\\.|(?!\3).)*)\3""")
MAX_VISITS = 10000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _child(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _load(read_file: ReadFile, path: str) -> Any:
    data = read_file(path)
    if data is None:
        return None
    return _parsed(data)


@functools.lru_cache(maxsize=4096)  # a fact about bytes, not a resource: safe to share
def _parsed(data: bytes) -> Any:
    """A kustomization's value (read only: callers never change it); None when unreadable.

    The watcher and the render cache ask for every environment at every commit, and the files
    rarely change: a fleet's shared base is parsed once, not once per environment.
    """
    try:
        return yaml.load(data, Loader=_LOADER)  # noqa: S506 - a safe loader, C or Python
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def _detect(read_file: ReadFile, env: str, settings: RenderSettings) -> str:
    if settings.type:
        return settings.type
    if any(read_file(_child(env, name)) is not None for name in KUSTOMIZATION_FILES):
        return "kustomize"
    if read_file(_child(env, "Chart.yaml")) is not None:
        return "helm"
    if read_file(_child(env, settings.jsonnet.main or "main.jsonnet")) is not None:
        return "jsonnet"
    return "plain"


def _kustomize(read_file: ReadFile, is_dir: IsDir, env: str, out: set[str]) -> None:
    seen: set[str] = set()
    pending = [env]
    while pending and len(seen) < MAX_VISITS:
        directory = pending.pop()
        if directory in seen:
            continue
        seen.add(directory)
        out.add(directory)
        data = None
        for name in KUSTOMIZATION_FILES:
            data = _load(read_file, _child(directory, name))
            if data is not None:
                break
        for ref in refs_of(data):
            if is_remote(ref.value):
                continue
            rel = join_rel(directory, ref.value)
            if rel is None:
                continue
            if ref.kind != "file" and is_dir(rel):
                pending.append(rel)
            else:
                out.add(rel)


def _jsonnet_imports(text: str) -> list[str]:
    return [m.group(4) for m in _IMPORT.finditer(text)]


def _jsonnet(read_file: ReadFile, env: str, settings: RenderSettings, out: set[str]) -> None:
    libs = [lib for lib in (norm_rel(x) for x in settings.jsonnet.libs) if lib is not None]
    entry = join_rel(env, settings.jsonnet.main or "main.jsonnet")
    if entry is None:
        return
    seen: set[str] = set()
    pending = [entry]
    while pending and len(seen) < MAX_VISITS:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        data = read_file(file)
        if data is None:
            continue
        out.add(file)
        if not file.endswith((".jsonnet", ".libsonnet", ".json")):
            continue
        directory = posixpath.dirname(file)
        for target in _jsonnet_imports(data.decode(errors="replace")):
            for base in (directory, *libs):
                rel = join_rel(base, target)
                if rel is not None and read_file(rel) is not None:
                    pending.append(rel)
                    break


def _prune(paths: set[str], is_dir: IsDir) -> frozenset[str]:
    """Drop paths already covered by a directory in the set."""
    dirs = sorted((p for p in paths if p == "" or is_dir(p)), key=len)
    kept: set[str] = set()
    for path in sorted(paths, key=len):
        if any(d != path and (d == "" or path.startswith(d + "/")) for d in dirs):
            continue
        kept.add(path)
    return frozenset(kept)


def referenced_paths(read_file: ReadFile, is_dir: IsDir, env_path: str,
                     settings: Mapping[str, Any] | None = None) -> frozenset[str]:
    """Repo-relative directories and files a render of ``env_path`` reads (see module doc)."""
    env = norm_rel(env_path.strip().rstrip("/"))
    if env is None:
        return frozenset()
    try:
        parsed = parse_settings(settings)
    except PermanentError:
        parsed = RenderSettings()  # the render will refuse the settings; depend on the dir
    out: set[str] = {env}
    kind = _detect(read_file, env, parsed)
    if kind == "kustomize":
        _kustomize(read_file, is_dir, env, out)
    elif kind == "helm":
        for value_file in parsed.helm.value_files:
            rel = join_rel(env, value_file)
            if rel is not None:
                out.add(rel)
    elif kind == "jsonnet":
        _jsonnet(read_file, env, parsed, out)
    return _prune(out, is_dir)
