"""An environment's declaration at one commit of a mirror: its format, its files, its edits.

Blocking (pygit2 reads): run in a worker thread. Every function takes the mirror's path and a
commit, reads through ``git_local`` and returns new tree ids (``git_write.replace_entries``),
so nothing is ever checked out and the rest of the tree keeps its ids and modes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.adapters import git_local, git_write
from orchestrator.domain import release as rel
from orchestrator.domain.config import CONFIG_FILE, Config, EnvironmentConfig, parse_config
from orchestrator.errors import PermanentError
from orchestrator.rendering import referenced_paths
from orchestrator.rendering.kustomize_refs import KUSTOMIZATION_FILES
from orchestrator.rendering.safety import join_rel
from orchestrator.rendering.settings import parse_settings

TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".jsonnet", ".libsonnet", ".j2")


def read_config(path: Path, sha: str) -> Config:
    """conveyor.yaml at ``sha`` (the branch's own: what the next commit will be checked by)."""
    data = git_local.read_file(path, sha, CONFIG_FILE)
    if data is None:
        raise PermanentError(f"commit {sha[:12]} has no {CONFIG_FILE}", reason="InvalidConfig")
    return parse_config(data.decode(errors="replace"), dirs=git_local.list_dirs(path, sha))


def environment(config: Config, env: str) -> EnvironmentConfig:
    found = config.environments.get(env)
    if found is None:
        known = ", ".join(sorted(config.environments)) or "none"
        raise PermanentError(f"no environment {env!r} in {CONFIG_FILE} (known: {known})",
                             reason="UnknownEnvironment")
    return found


def _child(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _text(path: Path, sha: str, file: str) -> str | None:
    data = git_local.read_file(path, sha, file)
    return None if data is None else data.decode()


def kind_of(path: Path, sha: str, env: EnvironmentConfig) -> str:
    """The renderer the environment uses at ``sha`` (as ``rendering.detect`` decides)."""
    declared = env.render.get("type")
    if isinstance(declared, str) and declared:
        return declared
    if git_local.tree_id(path, sha, env.path) is None:
        raise PermanentError(f"environment {env.name}: {env.path or '.'} does not exist at "
                             f"{sha[:12]}", reason="InvalidRelease")
    if kustomization(path, sha, env.path) is not None:
        return "kustomize"
    if git_local.read_file(path, sha, _child(env.path, "Chart.yaml")) is not None:
        return "helm"
    names = list(git_local.iter_tree(path, sha, env.path))
    if any(n.endswith(".jsonnet") for n in names):
        return "jsonnet"
    if any(n.endswith(".j2") for n in names):
        return "jinja"
    return "plain"


def kustomization(path: Path, sha: str, directory: str) -> str | None:
    for name in KUSTOMIZATION_FILES:
        file = _child(directory, name)
        if git_local.read_file(path, sha, file) is not None:
            return file
    return None


def values_file(path: Path, sha: str, env: EnvironmentConfig) -> str:
    """The values file a release edits: the first ``helm.valueFiles`` entry inside the
    repository, else the chart's ``values.yaml``."""
    for value_file in parse_settings(env.render).helm.value_files:
        rel_path = join_rel(env.path, value_file)
        if rel_path is not None and git_local.read_file(path, sha, rel_path) is not None:
            return rel_path
    return _child(env.path, "values.yaml")


def _text_files(path: Path, sha: str, env: EnvironmentConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in git_local.iter_tree(path, sha, env.path):
        if name.endswith(TEXT_SUFFIXES):
            text = _text(path, sha, name)
            if text is not None:
                out[name] = text
    return out


@dataclass(frozen=True, slots=True)
class Edits:
    """Files to write (path -> text) and the format they were edited as."""

    kind: str
    files: Mapping[str, str]


def release_edits(path: Path, sha: str, env: EnvironmentConfig,
                  images: Sequence[rel.ImageSpec], sets: Sequence[rel.SetSpec]) -> Edits:
    """What writing ``images`` and ``sets`` into the environment changes (unchanged files
    are left out: an empty result means the declaration already says so)."""
    kind = kind_of(path, sha, env)
    files: dict[str, str] = {}
    if kind == "kustomize":
        if sets:
            raise rel.ReleaseError(f"environment {env.name} is a Kustomize overlay: --set "
                                   "edits Helm values; use --image")
        file = kustomization(path, sha, env.path)
        assert file is not None
        old = _text(path, sha, file) or ""
        if images:
            files[file] = rel.set_kustomize_images(old, images, file)
    elif kind == "helm":
        file = values_file(path, sha, env)
        old = _text(path, sha, file) or ""
        files[file] = rel.set_values(old, sets, images, file)
    else:
        if sets:
            raise rel.ReleaseError(f"environment {env.name} is {kind}: --set edits Helm "
                                   "values; use --image")
        current = _text_files(path, sha, env)
        files = {e.path: e.text for e in rel.edit_text_files(current, images)}
    unchanged = {f for f, text in files.items() if _text(path, sha, f) == text}
    return Edits(kind, {f: t for f, t in files.items() if f not in unchanged})


def images_of(path: Path, sha: str, env: EnvironmentConfig) -> list[rel.ImageSpec]:
    """The images the environment's declaration pins at ``sha``."""
    kind = kind_of(path, sha, env)
    if kind == "kustomize":
        file = kustomization(path, sha, env.path)
        return rel.kustomize_images(_text(path, sha, file) or "", file or "") if file else []
    if kind == "helm":
        file = values_file(path, sha, env)
        return rel.values_images(_text(path, sha, file) or "", file)
    found: dict[str, rel.ImageSpec] = {}
    for text in _text_files(path, sha, env).values():
        for image in rel.text_images(text):
            found.setdefault(image.name, image)
    return list(found.values())


def write_files(path: Path, base: str, files: Mapping[str, str | bytes]) -> str:
    """The tree of ``base`` with ``files`` written (modes kept for files that exist)."""
    changes: dict[str, git_write.Entry | None] = {}
    for file, text in files.items():
        data = text.encode() if isinstance(text, str) else text
        changes[file] = (git_write.write_blob(path, data), git_write.file_mode(path, base, file))
    return git_write.replace_entries(path, base, changes)


def inputs_of(path: Path, sha: str, env: EnvironmentConfig) -> set[str]:
    """Every path a render of the environment reads at ``sha`` (the render key's inputs)."""

    def read(file: str) -> bytes | None:
        try:  # no blob is loaded whole to learn it is too big: the render refuses it
            return git_local.read_file(path, sha, file, max_bytes=8 << 20)
        except PermanentError:
            return None

    def is_dir(file: str) -> bool:
        return git_local.is_tree(path, sha, file)

    return set(referenced_paths(read, is_dir, env.path, env.render)) | {env.path}


def restore_inputs(path: Path, head: str, old: str, env: EnvironmentConfig) -> tuple[str,
                                                                                    list[str]]:
    """The tree of ``head`` with the environment's inputs (read at either commit) as they
    were at ``old``: a path that did not exist then is removed. Returns (tree, paths)."""
    paths = sorted(inputs_of(path, old, env) | inputs_of(path, head, env))
    # a path under another one in the set is restored with it
    top = [p for p in paths if not any(q != p and (q == "" or p.startswith(q + "/"))
                                       for q in paths)]
    changes = {p: git_write.entry_at(path, old, p) for p in top}
    return git_write.replace_entries(path, head, changes), top


def copy_files(path: Path, source_sha: str, source: EnvironmentConfig, dest: EnvironmentConfig,
               files: Sequence[str]) -> dict[str, bytes]:
    """``files`` (relative to the environment directory) of ``source`` at ``source_sha``,
    keyed by their place in ``dest``."""
    out: dict[str, bytes] = {}
    for file in files:
        data = git_local.read_file(path, source_sha, posixpath.join(source.path, file)
                                   if source.path else file)
        if data is None:
            raise PermanentError(f"promotion file {file} is not in {source.name}'s "
                                 f"directory at {source_sha[:12]}", reason="PromotionRefused")
        out[posixpath.join(dest.path, file) if dest.path else file] = data
    return out
