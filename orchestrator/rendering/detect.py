"""Which renderer a directory needs, when ``render.type`` does not say.

In order: a kustomization file -> kustomize; ``Chart.yaml`` -> helm; any ``*.jsonnet`` file ->
jsonnet; any ``*.j2`` template -> jinja; otherwise plain. Hidden directories are not looked at.
Two template languages in one tree is ambiguous and refused: set ``render.type``.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import PermanentError
from orchestrator.rendering.kustomize_refs import KUSTOMIZATION_FILES

# Detection looks at no more than this many entries (a huge tree is plain, or says its type).
MAX_SCAN = 20000


def detect(env_dir: Path) -> str:
    if any((env_dir / name).is_file() for name in KUSTOMIZATION_FILES):
        return "kustomize"
    if (env_dir / "Chart.yaml").is_file():
        return "helm"
    jsonnet = jinja = False
    scanned = 0
    for _dirpath, dirnames, filenames in os.walk(env_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            jsonnet = jsonnet or name.endswith(".jsonnet")
            jinja = jinja or name.endswith(".j2")
        scanned += len(filenames) + len(dirnames)
        if scanned > MAX_SCAN:
            break
    if jsonnet and jinja:
        raise PermanentError(f"{env_dir.name}: holds both *.jsonnet and *.j2 files; set "
                             "render.type to say which renderer to use",
                             reason="InvalidRenderSettings")
    if jsonnet:
        return "jsonnet"
    if jinja:
        return "jinja"
    return "plain"
