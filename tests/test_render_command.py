"""`conveyor render`: repository boundary, --env from conveyor.yaml, yaml/json output, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from orchestrator.rendering.command import render_command


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(path: Path, env: str | None = None, output: str = "yaml") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = render_command(path, env, output, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


CONFIG = """environments:
  dev:
    path: envs/dev
    render:
      include: "*.yaml"
"""


def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir(parents=True)
    return write(tmp_path, {
        "conveyor.yaml": CONFIG,
        "envs/dev/b.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
        "envs/dev/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: z}\n---\n"
                           "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n",
        "envs/dev/c.json": '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}}',
    })


def test_env_from_config_yaml_sorted_like_bundles(tmp_path: Path) -> None:
    code, out, err = run(repo(tmp_path), "dev")
    assert (code, err) == (0, "")
    docs = list(yaml.safe_load_all(out))
    # sorted by (group, kind, namespace, name); the .json file is excluded by include
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == \
        [("ConfigMap", "z"), ("Service", "b"), ("Deployment", "a")]
    assert out.count("\n---\n") == 2


def test_path_rendered_directly_as_json(tmp_path: Path) -> None:
    root = repo(tmp_path)
    code, out, _ = run(root / "envs" / "dev", None, "json")
    assert code == 0
    assert [d["metadata"]["name"] for d in json.loads(out)] == ["z", "c", "b", "a"]


def test_errors_each_on_a_line(tmp_path: Path) -> None:
    root = repo(tmp_path)
    write(root, {"envs/dev/d.yaml": "kind: X\n---\napiVersion: v1\nkind: Y\n"})
    code, out, err = run(root, "dev")
    assert (code, out) == (1, "")
    assert err.splitlines() == ["envs/dev/d.yaml:1:1: missing apiVersion",
                                "envs/dev/d.yaml:1:1: missing metadata.name",
                                "envs/dev/d.yaml:3:1: missing metadata.name"]


def test_unknown_env_and_missing_config(tmp_path: Path) -> None:
    root = repo(tmp_path)
    code, _, err = run(root, "prod")
    assert code == 1 and "no environment 'prod' (known: dev)" in err
    (root / "conveyor.yaml").unlink()
    code, _, err = run(root, "dev")
    assert code == 1 and "conveyor.yaml does not exist" in err


def test_repository_is_the_boundary(tmp_path: Path) -> None:
    root = repo(tmp_path / "inner")
    write(tmp_path, {"outside.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"})
    write(root, {"envs/dev/kustomization.yaml": "resources: [../../../outside.yaml]\n"})
    code, out, err = run(root / "envs" / "dev")
    assert code == 1 and out == ""
    assert "points outside the repository" in err


def test_bad_output_format(tmp_path: Path) -> None:
    assert run(repo(tmp_path), "dev", "toml")[0] == 1
