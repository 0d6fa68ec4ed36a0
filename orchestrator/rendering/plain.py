"""Plain directories: every ``.yaml``, ``.yml`` and ``.json`` file, recursively.

Like Argo CD's directory source: files are read in path order, multi-document YAML is split,
empty documents are skipped, ``kind: List`` is flattened, and files that are not manifests
(README.md, hidden files and directories, kustomization files, the root conveyor.yaml) are
skipped. ``include``/``exclude`` globs select files relative to the environment directory.

A YAML or JSON file none of whose documents is a Kubernetes object - no top-level ``kind``,
nor ``apiVersion`` with ``metadata`` - is data, not a manifest, and is skipped as Argo CD skips
it: ``values.yaml`` beside the manifests, kustomize ``configurations`` files, ``renovate.json``,
``Chart.yaml``, a top-level list of strings. Stricter than Argo CD: a file that does not parse
(or trips a safety limit such as a YAML bomb) is always an error, and a file mixing objects
with other documents is an error too - that is a manifest with a mistake in it.

Symlinks are followed only while they stay inside the repository; one pointing outside - to a
file or a directory - is an error naming it. Symlinked directories are visited once (no loops).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import PermanentError
from orchestrator.rendering.globs import selected
from orchestrator.rendering.model import RenderLimits
from orchestrator.rendering.parse import NOT_AN_OBJECT, Located, decode, parse_file
from orchestrator.rendering.safety import display, read_bytes, resolve
from orchestrator.rendering.settings import RenderSettings

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SKIPPED_NAMES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})
VERSION = "plain/1"

# (text, repo-relative file) -> (objects, errors); used by jinja to render templates first.
Transform = Callable[[str, str], tuple[list[Located], list[str]]]


def walk(root: Path, env_rel: str, settings: RenderSettings,
         suffixes: tuple[str, ...] = MANIFEST_SUFFIXES) -> tuple[list[str], list[str]]:
    """Repo-relative files a directory render reads, and the escaping symlinks found."""
    real_root = root.resolve()
    start = resolve(root, env_rel, referrer=f"environment path {display(env_rel)!r}")
    if not start.is_dir():
        raise PermanentError(f"environment path {display(env_rel)!r} is not a directory",
                             reason="NotADirectory")
    files: list[str] = []
    errors: list[str] = []
    visited: set[Path] = set()

    def visit(real_dir: Path, rel_dir: str) -> None:
        # rel_dir: path relative to the env dir as the user sees it (through symlinks)
        if real_dir in visited:
            return
        visited.add(real_dir)
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError as exc:
            errors.append(f"{display(env_rel)}/{rel_dir}: cannot list: {exc.strerror}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            repo_rel = f"{env_rel}/{rel}" if env_rel else rel
            path = Path(entry.path)
            target = path.resolve() if entry.is_symlink() else path
            if entry.is_symlink() and not target.is_relative_to(real_root):
                errors.append(f"{repo_rel}: symlink points outside the repository; refused")
                continue
            if target.is_dir():
                if settings.recurse:
                    visit(target, rel)
                continue
            if not entry.name.endswith(suffixes) or entry.name in SKIPPED_NAMES:
                continue
            if repo_rel == "conveyor.yaml":
                continue
            if selected(rel, settings.include, settings.exclude):
                files.append(repo_rel)

    visit(start, "")
    return files, errors


def looks_like_manifests(text: str, found: list[Located], problems: list[str]) -> bool:
    """Is a parsed file meant as Kubernetes manifests, or unrelated data (Argo CD's rule)?

    Data: it parsed, and none of its documents is a mapping with ``kind`` or with
    ``apiVersion`` and ``metadata`` (``Chart.yaml`` has an apiVersion but is no object).
    A file that did not parse, or hit a safety limit, is always reported, and so is one
    whose other documents mention ``kind`` (objects in a shape we do not read).
    """
    if any(NOT_AN_OBJECT not in problem for problem in problems):
        return True
    if problems and ("kind:" in text or '"kind"' in text):
        return True  # objects in a shape we do not read (a YAML list of them): say so
    return any("kind" in obj or ("apiVersion" in obj and "metadata" in obj)
               for obj in (i.manifest.obj for i in found))


def render_directory(root: Path, env_rel: str, settings: RenderSettings, limits: RenderLimits,
                     transform: Transform | None = None,
                     suffixes: tuple[str, ...] = MANIFEST_SUFFIXES
                     ) -> tuple[list[Located], list[str]]:
    files, errors = walk(root, env_rel, settings, suffixes)
    items: list[Located] = []
    for rel in files:
        try:
            data = read_bytes(root, rel, limits)
        except PermanentError as exc:
            errors.append(str(exc))
            continue
        text, problems = decode(data, rel)
        if text is None:
            errors.extend(problems)
            continue
        if transform is not None:
            found, problems = transform(text, rel)
        else:
            found, problems = parse_file(text, rel)
            if not looks_like_manifests(text, found, problems):
                continue
        items.extend(found)
        errors.extend(problems)
    return items, errors
