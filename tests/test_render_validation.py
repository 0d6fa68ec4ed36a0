"""Validation before apply: structure, duplicates naming both sources, schema, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ManifestError
from orchestrator.rendering import RenderLimits, render


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def errors_of(root: Path, env: str = "", settings: dict[str, object] | None = None,
              **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        render(root, env, settings, **kw)  # type: ignore[arg-type]
    return info.value.errors


def test_missing_fields_named_with_positions(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "kind: ConfigMap\nmetadata:\n  labels: {}\n---\n"
                               "apiVersion: v1\nkind: 3\nmetadata:\n  name: ''\n---\n"
                               "apiVersion: v1\nkind: Secret\n"})
    assert errors_of(tmp_path) == [
        "a.yaml:1:1: missing apiVersion",
        "a.yaml:2:1: missing metadata.name",       # fields are reported at their key
        "a.yaml:6:1: kind must be a non-empty string",
        "a.yaml:8:3: metadata.name must be a non-empty string",
        "a.yaml:10:1: missing metadata.name",
    ]


def test_duplicates_name_both_sources(tmp_path: Path) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: dev\n"
    write(tmp_path, {"a.yaml": cm, "sub/b.yaml": "# first line\n" + cm,
                     # same name, other kind or namespace or group: not duplicates
                     "c.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: web, "
                               "namespace: dev}\n---\napiVersion: v1\nkind: ConfigMap\n"
                               "metadata: {name: web, namespace: prod}\n"})
    assert errors_of(tmp_path) == [
        "sub/b.yaml:2:1: duplicate object ConfigMap/dev/web: defined in a.yaml:1 and "
        "sub/b.yaml:2"]


def test_all_kinds_of_errors_are_listed_together(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                     "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                     "c.yaml": "apiVersion: v1\nkind: [\n"})
    # a parse error stops before structural checks, but every parse error is reported
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and errors[0].startswith("c.yaml:")
    (tmp_path / "c.yaml").write_text("kind: Secret\nmetadata: {name: s}\n")
    assert errors_of(tmp_path) == [
        "c.yaml:1:1: missing apiVersion",
        "b.yaml:1:1: duplicate object ConfigMap/a: defined in a.yaml:1 and b.yaml:1"]


def test_schema_validation_is_opt_in(tmp_path: Path) -> None:
    write(tmp_path, {"d.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                               "spec:\n  replicas: three\n  selector: {}\n  template: {}\n",
                     "crd.yaml": "apiVersion: example.com/v1\nkind: Widget\n"
                                 "metadata: {name: w}\n"})
    assert len(render(tmp_path, "").manifests) == 2
    errors = errors_of(tmp_path, "", {"validate": {"schema": True, "kubernetesVersion": "1.30"}})
    assert len(errors) == 1
    assert errors[0].startswith("d.yaml:5:3: Deployment/web: spec.replicas: 'three' is not")
    assert "Kubernetes 1.30 schema" in errors[0]
    errors = errors_of(tmp_path, "", {"validate": {"schema": True,
                                                   "ignoreMissingSchemas": False}})
    assert any("Widget" in e and "Couldn't find schema" in e for e in errors)


def test_schema_valid_objects_pass(tmp_path: Path) -> None:
    write(tmp_path, {"d.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
                               "spec:\n  replicas: 2\n  selector: {matchLabels: {a: b}}\n"
                               "  template:\n    metadata: {labels: {a: b}}\n"
                               "    spec: {containers: [{name: c, image: nginx}]}\n"})
    settings = {"validate": {"schema": True, "kubernetesVersion": "1.30", "strict": True}}
    assert len(render(tmp_path, "", settings).manifests) == 1


def test_object_limit(tmp_path: Path) -> None:
    docs = "---\n".join(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n"
                        for i in range(11))
    write(tmp_path, {"a.yaml": docs})
    assert len(render(tmp_path, "").manifests) == 11
    assert errors_of(tmp_path, limits=RenderLimits(max_objects=10)) == [
        "render produced 11 objects, more than the limit of 10"]
