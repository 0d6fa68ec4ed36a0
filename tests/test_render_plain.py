"""Plain YAML/JSON directories: recursive, multi-document, globs, skips, List flattening."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import Manifest, RenderResult, render


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cm(name: str, ns: str | None = None) -> str:
    meta = f"{{name: {name}" + (f", namespace: {ns}}}" if ns else "}")
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {meta}\n"


def cm_json(name: str) -> str:
    return f'{{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "{name}"}}}}'


def names(result: RenderResult) -> list[str]:
    return [m.obj["metadata"]["name"] for m in result.manifests]


def test_recursive_multi_document_with_sources(tmp_path: Path) -> None:
    write(tmp_path, {
        "envs/dev/a.yaml": cm("a") + "---\n" + cm("b"),
        "envs/dev/sub/c.yml": "---\n# only a comment\n---\n" + cm("c"),
        "envs/dev/d.json": '{"apiVersion": "v1", "kind": "ConfigMap",\n "metadata": {"name": "d"}}',
        "envs/dev/README.md": "# not a manifest: [",
        "envs/dev/.hidden/e.yaml": cm("e"),
        "envs/other/f.yaml": cm("f"),
    })
    result = render(tmp_path, "envs/dev")
    assert result.renderer == "plain"
    assert result.tool_version == "plain/1"
    assert result.manifests == (
        Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
                 "envs/dev/a.yaml:1"),
        Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}},
                 "envs/dev/a.yaml:5"),
        Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}},
                 "envs/dev/d.json:1"),
        Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
                 "envs/dev/sub/c.yml:4"),
    )


def test_root_env_skips_conveyor_yaml(tmp_path: Path) -> None:
    write(tmp_path, {"conveyor.yaml": "environments: {dev: {path: .}}\n", "a.yaml": cm("a")})
    assert names(render(tmp_path, "")) == ["a"]


def test_lists_are_flattened(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "apiVersion: v1\nkind: List\nitems:\n"
                               "  - {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n"
                               "  - {apiVersion: v1, kind: Secret, metadata: {name: y}}\n",
                     "b.json": '[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": '
                               '{"name": "z"}}]'})
    result = render(tmp_path, "")
    assert names(result) == ["x", "y", "z"]
    assert [m.source for m in result.manifests] == ["a.yaml:4", "a.yaml:5", "b.json:1"]


@pytest.mark.parametrize(("settings", "expected"), [
    ({"include": "*.yaml"}, ["a", "c"]),
    ({"include": "{a,b}.*"}, ["a", "b"]),
    ({"exclude": ["sub/**"]}, ["a", "b"]),
    ({"exclude": "*.json", "recurse": False}, ["a"]),
    ({"include": ["sub/*.yaml"]}, ["c"]),
    ({"include": "**/*.yaml", "exclude": "a.*"}, ["c"]),
])
def test_include_exclude(tmp_path: Path, settings: dict[str, object], expected: list[str]
                         ) -> None:
    write(tmp_path, {"a.yaml": cm("a"), "b.json": cm_json("b"), "sub/c.yaml": cm("c")})
    assert sorted(names(render(tmp_path, "", settings))) == expected


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": cm("a")})
    with pytest.raises(PermanentError, match=r"unknown key\(s\) \['exlude'\]"):
        render(tmp_path, "", {"exlude": "*.yaml"})
    with pytest.raises(PermanentError, match="type must be one of"):
        render(tmp_path, "", {"type": "ksonnet"})


def test_env_path_must_be_a_directory(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": cm("a")})
    with pytest.raises(PermanentError, match="not a directory"):
        render(tmp_path, "missing")
    with pytest.raises(PermanentError, match="not a directory"):
        render(tmp_path, "a.yaml")


def test_every_file_error_is_reported_together(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a\n",
                     "b.json": '{"apiVersion": "v1",\n  "kind": }',
                     # a top-level list of strings is data and skipped, as in Argo CD;
                     # a YAML list of objects is a manifest in a shape we do not read
                     "c.yaml": "- apiVersion: v1\n  kind: ConfigMap\n",
                     "d.yaml": cm("d")})
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "")
    errors = info.value.errors
    assert len(errors) == 3
    assert errors[0].startswith("a.yaml:4:1: ")
    assert errors[1].startswith("b.json:2:11: invalid JSON")
    assert errors[2] == "c.yaml:1:1: expected a Kubernetes object (a mapping), got list"
