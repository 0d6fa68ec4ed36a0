"""Jsonnet renders equal the jsonnet library's own output, and imports stay in the repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import _jsonnet
import pytest

from orchestrator.domain.bundle import object_key
from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import RenderLimits, render

FIXTURE = Path(__file__).parent / "fixtures" / "render" / "jsonnet"
SETTINGS = {"jsonnet": {"libs": ["vendor"], "extVars": [{"name": "env", "value": "dev"}],
                        "tlas": [{"name": "replicas", "value": "3", "code": True}]}}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_identical_to_the_jsonnet_library() -> None:
    reference = json.loads(_jsonnet.evaluate_file(
        str(FIXTURE / "envs/dev/main.jsonnet"), jpathdir=[str(FIXTURE / "vendor")],
        ext_vars={"env": "dev"}, tla_codes={"replicas": "3"}))
    result = render(FIXTURE, "envs/dev", SETTINGS)
    assert result.renderer == "jsonnet"
    assert result.tool_version == f"jsonnet {_jsonnet.version.lstrip('v')}"
    assert sorted((m.obj for m in result.manifests), key=object_key) == \
        sorted(reference, key=object_key)
    assert {m.source for m in result.manifests} == {"envs/dev/main.jsonnet"}
    deployment = next(m.obj for m in result.manifests if m.obj["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3


def test_mapping_form_of_vars_and_values(tmp_path: Path) -> None:
    write(tmp_path, {"main.jsonnet": "function(n) { apiVersion: 'v1', kind: 'ConfigMap', "
                                     "metadata: { name: std.extVar('name') + n }, "
                                     "data: { tag: std.extVar('values').tag } }"})
    result = render(tmp_path, "", {"jsonnet": {"extVars": {"name": "cm"}, "tlas": {"n": 7}}},
                    values={"tag": "v2"})
    assert result.manifests[0].obj["metadata"]["name"] == "cm7"
    assert result.manifests[0].obj["data"] == {"tag": "v2"}


@pytest.mark.parametrize("output", [
    "{ apiVersion: 'v1', kind: 'List', items: [%s, %s] }",
    "[%s, [%s]]",
    "{ first: %s, nested: { second: %s } }",
])
def test_output_shapes(tmp_path: Path, output: str) -> None:
    a = "{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'a' } }"
    b = "{ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'b' } }"
    write(tmp_path, {"app/main.jsonnet": output % (a, b)})
    assert sorted(m.obj["metadata"]["name"] for m in render(tmp_path, "app").manifests) == \
        ["a", "b"]


def test_every_jsonnet_file_without_main(tmp_path: Path) -> None:
    obj = "{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: '%s' } }"
    write(tmp_path, {"app/a.jsonnet": obj % "a", "app/b.jsonnet": obj % "b",
                     "app/lib.libsonnet": "error 'not evaluated'",
                     "app/data.yaml": "not: a manifest"})
    result = render(tmp_path, "app")
    assert [(m.obj["metadata"]["name"], m.source) for m in result.manifests] == \
        [("a", "app/a.jsonnet"), ("b", "app/b.jsonnet")]


def test_errors_name_file_line_column(tmp_path: Path) -> None:
    write(tmp_path, {"app/main.jsonnet": "local x = 1;\n{ a: x +  }\n"})
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "app")
    assert info.value.errors[0].startswith("app/main.jsonnet:2:")
    write(tmp_path, {"app/main.jsonnet": "local l = import 'l.libsonnet';\nl.f()\n",
                     "app/l.libsonnet": "{\n  f():: error 'boom',\n}\n"})
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "app")
    assert info.value.errors == ["app/l.libsonnet:2:9: RUNTIME ERROR: boom"]


def test_output_objects_are_validated(tmp_path: Path) -> None:
    write(tmp_path, {"main.jsonnet": "[{ apiVersion: 'v1', kind: 'ConfigMap' }]"})
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "")
    assert info.value.errors == ["main.jsonnet: ConfigMap/?: missing metadata.name"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path, {"secret.libsonnet": "{ stolen: true }"})
    root = tmp_path / "repo"
    root.mkdir()
    return root


@pytest.mark.parametrize("target", ["../../secret.libsonnet", "../../../secret.libsonnet",
                                    "/etc/hostname"])
def test_imports_cannot_escape(repo: Path, target: str) -> None:
    write(repo, {"app/main.jsonnet": f"import '{target}'"})
    with pytest.raises(ManifestError) as info:
        render(repo, "app")
    message = info.value.errors[0]
    assert "refused" in message and "stolen" not in message


def test_symlinked_import_outside_is_refused(repo: Path) -> None:
    write(repo, {"app/main.jsonnet": "import 'lib.libsonnet'"})
    os.symlink(repo.parent / "secret.libsonnet", repo / "app" / "lib.libsonnet")
    with pytest.raises(ManifestError, match="symlink that points outside the repository"):
        render(repo, "app")


def test_symlinked_main_outside_is_refused(repo: Path) -> None:
    (repo / "app").mkdir()
    os.symlink(repo.parent / "secret.libsonnet", repo / "app" / "main.jsonnet")
    with pytest.raises(ManifestError, match="symlink that points outside the repository"):
        render(repo, "app")


def test_main_setting_cannot_escape(repo: Path) -> None:
    write(repo, {"app/x.jsonnet": "{}"})
    with pytest.raises(PermanentError, match="outside the repository"):
        render(repo, "app", {"jsonnet": {"main": "../../secret.libsonnet"}})


def test_runaway_evaluation_is_stopped(tmp_path: Path) -> None:
    write(tmp_path, {"main.jsonnet": "std.foldl(function(a, b) a + b, std.range(0, 1e9), 0)"})
    with pytest.raises(PermanentError) as info:
        render(tmp_path, "", limits=RenderLimits(timeout=1.0, memory_bytes=512 << 20))
    assert info.value.reason in {"RenderTimeout", "RenderOutOfMemory"}
