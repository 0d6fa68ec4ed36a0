"""Several Kustomize overlays of one snapshot in one ``kubectl kustomize`` run.

Starting ``kubectl`` costs more than building a small overlay (about 40 ms against 5 ms on
a two-core machine), so a fleet of overlays sharing a base spends most of its render time
starting processes. ``render_batch`` writes a temporary kustomization inside the snapshot
(kustomize's load restrictor forbids files outside a kustomization's root) whose ``resources``
list ``overlay 1, marker 1, overlay 2, marker 2, ...`` with ``sortOptions: {order: fifo}``
(kustomize >= 5.0): the output then arrives in accumulation order and the marker objects split
it into each overlay's objects. Each part is then what the overlay renders alone: the same
objects (``render_kustomize`` returns objects in the bundle's canonical order either way).

A batch is an optimisation, never a change of meaning, so it is only tried where building an
overlay as a resource of another kustomization gives what it gives alone, and checked after:

- the overlay passed ``precheck`` (its errors are reported by rendering it alone);
- no kustomization of its graph uses ``vars`` (resolved once over the whole build, so a
  ``$(VAR)`` of one overlay could be filled from another's), ``sortOptions`` (only the root's
  counts) or ``buildMetadata`` (origin annotations are paths relative to the root);
- its own kustomization sets a ``namespace`` no other overlay of the batch sets, and every
  namespaced object of its part is in that namespace: overlays of one batch never share a
  namespace, so kustomize's build-wide steps (generated names' hash suffixes and the
  references to them) cannot mix them up;
- the markers come back in order, the output parses, the tool succeeds.

Anything else (an id conflict between overlays, a broken overlay, a failed check) returns
None for every overlay of the batch: the caller renders each alone, so errors stay exactly
per overlay, with file and line.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.domain.bundle import object_key
from orchestrator.errors import PermanentError
from orchestrator.rendering.model import RenderLimits
from orchestrator.rendering.parse import Located, parse_tool_output
from orchestrator.rendering.safety import display, run_tool

# fields whose meaning changes when the kustomization is not the root of the build
UNBATCHABLE_FIELDS = ("vars", "sortOptions", "buildMetadata")
MARKER_KIND = "ConfigMap"
_VERSION = re.compile(r"kustomize v?(\d+)\.")

# (objects, errors, tool version) as ``render_kustomize`` returns them, or None: render alone
Part = tuple[list[Located], list[str], str] | None


def supports_fifo(version: str) -> bool:
    """Does this tool (``tool_version``'s words) honour ``sortOptions`` (kustomize >= 5)?"""
    found = _VERSION.search(version)
    return found is not None and int(found.group(1)) >= 5


def batchable(graph: Sequence[Any]) -> str | None:
    """The namespace the overlay's root kustomization sets, when it may join a batch."""
    if not graph:
        return None
    for doc in graph:
        value = doc.value if isinstance(doc.value, dict) else {}
        if any(field in value for field in UNBATCHABLE_FIELDS):
            return None
    root = graph[0].value if isinstance(graph[0].value, dict) else {}
    namespace = root.get("namespace")
    return namespace if isinstance(namespace, str) and namespace else None


def _marker(token: str, i: int) -> str:
    return f"conveyor-batch-{token}-{i}"


def render_batch(root: Path, env_rels: Sequence[str], namespaces: Sequence[str],
                 argv: Sequence[str], version: str, limits: RenderLimits
                 ) -> list[Part] | None:
    """Each overlay's objects from one tool run, or None for each when the batch cannot say;
    None instead of the list when the run timed out (then smaller batches would too: render
    each alone, with a time limit of its own).

    ``env_rels`` are overlays that passed ``precheck`` and ``batchable`` (``namespaces`` their
    namespaces, all different); ``argv`` the tool prefix of ``find_binary``. Blocking.
    """
    n = len(env_rels)
    if n == 0:
        return []
    token = secrets.token_hex(6)
    where = root / f".conveyor-batch-{token}"
    where.mkdir(mode=0o700)  # exclusive: a repository's own directory is never reused
    try:
        resources: list[str] = []
        for i, env_rel in enumerate(env_rels):
            (where / f"m{i}.yaml").write_text(
                f"apiVersion: v1\nkind: {MARKER_KIND}\nmetadata:\n  name: {_marker(token, i)}\n")
            resources += [f"../{env_rel}", f"m{i}.yaml"]
        (where / "kustomization.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
             "sortOptions": {"order": "fifo"}, "resources": resources}, sort_keys=False))
        try:
            out = run_tool([*argv, "--load-restrictor=LoadRestrictionsRootOnly", str(where)],
                           cwd=where, limits=limits, what=f"kustomize batch of {n}")
        except PermanentError as exc:
            return None if exc.reason == "RenderTimeout" else [None] * n
    finally:
        shutil.rmtree(where, ignore_errors=True)
    items, problems = parse_tool_output(out.stdout.decode(errors="replace"), "kustomize batch")
    if problems:
        return [None] * n
    parts: list[list[Located]] = [[]]
    for item in items:
        obj = item.manifest.obj
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if obj.get("kind") == MARKER_KIND and isinstance(name, str) and \
                name.startswith(f"conveyor-batch-{token}-"):
            if name != _marker(token, len(parts) - 1) or \
                    (isinstance(meta, dict) and meta.get("namespace")):
                return [None] * n
            parts.append([])
            continue
        parts[-1].append(item)
    if len(parts) != n + 1 or parts[-1]:
        return [None] * n
    result: list[Part] = []
    for env_rel, namespace, part in zip(env_rels, namespaces, parts, strict=False):
        if any(object_key(i.manifest.obj).namespace not in ("", namespace) for i in part):
            return [None] * n
        label = f"kustomize {display(env_rel)}"
        located = [Located(type(i.manifest)(i.manifest.obj, label)) for i in part]
        result.append((sorted(located, key=lambda i: object_key(i.manifest.obj)), [], version))
    return result

