"""Jinja2 templates: sandboxed, strict, confined to the repository, errors with lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError
from orchestrator.rendering import RenderLimits, render

TEMPLATE = """{% from "lib/macros.j2" import labels %}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ name }}
  labels: {{ labels(name) }}
spec:
  replicas: {{ values.replicas }}
  template:
    metadata:
      annotations: {config: {{ config | b64encode }}}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path, {"outside.j2": "stolen: true\n"})
    root = tmp_path / "repo"
    write(root, {"envs/dev/app.yaml.j2": TEMPLATE,
                 "envs/dev/plain.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\n",
                 "envs/dev/README.md": "{{ not rendered",
                 "lib/macros.j2": "{% macro labels(n) %}{app: {{ n }}}{% endmacro %}"})
    return root


def test_templates_and_plain_files(repo: Path) -> None:
    settings = {"jinja": {"values": {"name": "web", "replicas": 1, "config": "a"}}}
    result = render(repo, "envs/dev", settings, values={"replicas": 3})
    assert result.renderer == "jinja"
    assert result.tool_version.startswith("jinja2 ")
    by_name = {m.obj["metadata"]["name"]: m for m in result.manifests}
    web = by_name["web"]
    assert web.source == "envs/dev/app.yaml.j2:2"
    assert web.obj["metadata"]["labels"] == {"app": "web"}
    assert web.obj["spec"]["replicas"] == 3  # per-render values win over settings
    assert web.obj["spec"]["template"]["metadata"]["annotations"] == {"config": "YQ=="}
    assert by_name["p"].source == "envs/dev/plain.yaml:1"


def test_undefined_is_an_error_with_line(repo: Path) -> None:
    with pytest.raises(ManifestError) as info:
        render(repo, "envs/dev", {"jinja": {"values": {"name": "web", "config": "a"}}})
    assert info.value.errors == [
        "envs/dev/app.yaml.j2:8: UndefinedError: 'dict object' has no attribute 'replicas'"]


def test_syntax_error_and_yaml_error_are_listed_together(repo: Path) -> None:
    write(repo, {"envs/dev/bad.yaml.j2": "a: {{ b \n", "envs/dev/worse.yaml.j2": "a: [\n"})
    with pytest.raises(ManifestError) as info:
        render(repo, "envs/dev", {"jinja": {"values": {"name": "w", "replicas": 1,
                                                       "config": ""}}})
    errors = info.value.errors
    assert len(errors) == 2
    assert errors[0].startswith("envs/dev/bad.yaml.j2:1: template syntax error:")
    assert errors[1].startswith("envs/dev/worse.yaml.j2:2:1:")


@pytest.mark.parametrize("name", ["../../outside.j2", "/etc/hostname", "../outside.j2"])
def test_includes_cannot_escape(repo: Path, name: str) -> None:
    write(repo, {"envs/dev/app.yaml.j2": f"{{% include '{name}' %}}\n"})
    with pytest.raises(ManifestError) as info:
        render(repo, "envs/dev")
    assert "stolen" not in str(info.value)
    assert "template not found" in str(info.value)


def test_symlinked_include_outside_is_refused(repo: Path) -> None:
    os.symlink(repo.parent / "outside.j2", repo / "lib" / "evil.j2")
    write(repo, {"envs/dev/app.yaml.j2": "{% include 'lib/evil.j2' %}\n"})
    with pytest.raises(ManifestError, match="symlink that points outside") as info:
        render(repo, "envs/dev")
    assert "stolen" not in str(info.value)


def test_sandbox_blocks_python_internals(repo: Path) -> None:
    write(repo, {"envs/dev/app.yaml.j2":
                 "x: {{ ''.__class__.__mro__[1].__subclasses__() }}\n"})
    with pytest.raises(ManifestError, match=r"SecurityError|UndefinedError"):
        render(repo, "envs/dev")


def test_runaway_template_is_stopped(repo: Path) -> None:
    write(repo, {"envs/dev/app.yaml.j2": "{% for a in range(100000) %}{% for b in "
                                         "range(100000) %}{{ a }}{% endfor %}{% endfor %}"})
    with pytest.raises(Exception) as info:
        render(repo, "envs/dev", limits=RenderLimits(timeout=1.0))
    assert getattr(info.value, "reason", None) in {"RenderTimeout", "OutputTooLarge"}
