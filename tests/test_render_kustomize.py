"""Kustomize renders are identical to the kubectl kustomize CLI, and refuse what they must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.bundle import object_key
from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import render

FIXTURE = Path(__file__).parent / "fixtures" / "render" / "kustomize"


def kubectl() -> str:
    found = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    return found


def reference(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], check=True, capture_output=True)
    return sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=object_key)


def ours(root: Path, env: str, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result = render(root, env, settings)
    assert result.renderer == "kustomize"
    return sorted((m.obj for m in result.manifests), key=object_key)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("env", ["base", "envs/dev", "envs/prod"])
def test_identical_to_kubectl_kustomize(env: str) -> None:
    assert ours(FIXTURE, env) == reference(FIXTURE / env)


def test_overlay_features_are_applied() -> None:
    objs = {(o["kind"], o["metadata"]["name"]): o for o in ours(FIXTURE, "envs/dev")}
    deployment = objs[("Deployment", "dev-web")]
    assert deployment["metadata"]["namespace"] == "dev"
    assert deployment["metadata"]["labels"]["env"] == "dev"          # commonLabels
    assert deployment["spec"]["replicas"] == 2                         # strategic merge patch
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27-dev"
    assert deployment["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # component
    generated = [name for kind, name in objs if kind == "ConfigMap"
                 and name.startswith("dev-web-config-")]
    assert len(generated) == 1                                          # hashed generator name
    ref = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]
    assert ref["configMapRef"]["name"] == generated[0]                  # name reference updated
    assert any(kind == "Secret" for kind, _ in objs)


def test_result_reports_source_and_tool_version() -> None:
    result = render(FIXTURE, "envs/prod")
    assert {m.source for m in result.manifests} == {"kustomize envs/prod"}
    assert "kustomize v" in result.tool_version


def test_detected_and_forced_type(tmp_path: Path) -> None:
    write(tmp_path, {"app/Kustomization": "resources: [cm.yaml]\n",
                     "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"})
    assert render(tmp_path, "app").renderer == "kustomize"
    # forced plain: the kustomization file is skipped and the manifest read directly
    result = render(tmp_path, "app", {"type": "plain"})
    assert result.renderer == "plain"
    assert [m.obj["metadata"]["name"] for m in result.manifests] == ["a"]


def test_tool_error_is_permanent_with_kustomize_words(tmp_path: Path) -> None:
    write(tmp_path, {"app/kustomization.yaml": "resources: [cm.yaml]\npatches:\n"
                     "  - patch: |-\n      - op: replace\n        path: /nope/x\n"
                     "        value: 1\n    target: {kind: ConfigMap}\n",
                     "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"})
    with pytest.raises(PermanentError) as info:
        render(tmp_path, "app")
    assert info.value.reason == "RenderFailed"
    assert "kustomize app" in str(info.value)


def test_missing_resource_named_with_position(tmp_path: Path) -> None:
    write(tmp_path, {"app/kustomization.yaml": "resources:\n  - cm.yaml\n  - nothere.yaml\n",
                     "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"})
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "app")
    assert info.value.errors == [
        "app/kustomization.yaml:3:5: 'nothere.yaml' does not exist in the repository"]


def test_output_is_validated(tmp_path: Path) -> None:
    write(tmp_path, {"app/kustomization.yaml": "resources: [a.yaml, b.yaml]\n",
                     "app/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                     "app/b.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {namespace: x}\n"})
    with pytest.raises((ManifestError, PermanentError)) as info:
        render(tmp_path, "app")
    # kustomize itself refuses an object without a name; either way the render fails clearly
    assert "name" in str(info.value)
