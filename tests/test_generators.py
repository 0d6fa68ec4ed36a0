"""Environment generators (directories, list, matrix) and the ``conveyor envs`` dry run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from orchestrator.commands.envs import envs_command
from orchestrator.domain.config import parse_config
from orchestrator.errors import ConfigError
from tests.support.repos import Repo

DIRS = ["envs", "envs/dev", "envs/staging", "envs/legacy", "envs/dev/patches", "apps",
        "apps/web", "apps/api", "base"]

DIRECTORIES = """
generators:
  - name: apps
    directories:
      - path: envs/*
      - path: envs/legacy
        exclude: true
    onRemove: prune
    template:
      name: "{{path.basename}}"
      path: "{{path}}"
      target: {git: {branch: "deploy/{{path.basename}}"}}
"""


def test_directories_generator_makes_one_environment_per_matching_directory() -> None:
    config = parse_config(DIRECTORIES, dirs=DIRS)
    assert sorted(config.environments) == ["dev", "staging"]  # legacy excluded, patches deeper
    dev = config.environments["dev"]
    assert dev.path == "envs/dev"
    assert dev.target == {"git": {"branch": "deploy/dev"}}
    assert (dev.generator, dev.on_remove) == ("apps", "prune")
    assert config.reads_tree


def test_without_a_tree_listing_directory_generators_make_nothing() -> None:
    assert parse_config(DIRECTORIES).environments == {}


def test_list_and_matrix_generators_merge_parameters() -> None:
    text = """
environments:
  tools: {path: tools}
generators:
  - list:
      elements: [{cluster: eu, tier: gold}, {cluster: us, tier: silver}]
    template: {name: "web-{{cluster}}", path: apps/web, description: "{{ tier }} tier"}
  - matrix:
      generators:
        - list: {elements: [{cluster: eu}, {cluster: us}]}
        - directories: [{path: apps/*}]
    template: {name: "{{cluster}}-{{path.basename}}", path: "{{path}}",
               target: {git: {branch: "deploy/{{cluster}}/{{path[1]}}"}}}
"""
    config = parse_config(text, dirs=DIRS)
    assert sorted(config.environments) == ["eu-api", "eu-web", "tools", "us-api", "us-web",
                                           "web-eu", "web-us"]
    assert config.environments["us-api"].target == {"git": {"branch": "deploy/us/api"}}
    assert config.environments["web-eu"].raw["description"] == "gold tier"
    assert config.environments["tools"].generator == ""
    assert config.environments["web-us"].generator == "generator-0"
    assert config.environments["web-us"].on_remove == "orphan"  # nothing is destroyed unasked


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("generators: {a: 1}", "generators", "must be a list"),
    ("generators:\n  - list: {elements: []}\n", "generators.0", "needs a 'template'"),
    ("generators:\n  - git: {}\n    template: {name: x}\n", "generators.0.git", "unknown key"),
    ("generators:\n  - directories: [{path: ../up}]\n    template: {name: x, path: x}\n",
     "generators.0.directories.0.path", "outside the repository"),
    ("generators:\n  - list: {elements: [{a: 1}]}\n    template: {name: \"e-{{b}}\", path: x}\n",
     "generators.0.template.name", "placeholder {{b}} has no value"),
    ("generators:\n  - list: {elements: [{a: 1}]}\n    onRemove: delete\n"
     "    template: {name: x, path: x}\n", "generators.0.onRemove", "must be one of"),
    ("generators:\n  - list: {elements: [{a: 1}]}\n    template: {name: \"x_{{a}}!\", path: x}\n",
     "generators.0.template", "environment names are"),
    ("environments: {web-1: {path: x}}\ngenerators:\n  - list: {elements: [{a: 1}]}\n"
     "    template: {name: \"web-{{a}}\", path: x}\n", "generators.0.template.name",
     "already exists"),
    ("generators:\n  - list: {elements: [{a: 1}]}\n    template: {name: x, path: x, tagret: 1}\n",
     "generators.0.template.tagret", "did you mean 'target'"),
])
def test_bad_generators_name_file_line_and_field(text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, dirs=DIRS)
    assert caught.value.field == field, str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.line is not None and caught.value.line >= 1


def test_conveyor_envs_lists_what_a_revision_generates(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"conveyor.yaml": DIRECTORIES, "envs/dev/a.yaml": "a: 1\n",
                 "envs/legacy/a.yaml": "a: 1\n"})
    first = repo.head()
    repo.commit({"envs/qa/a.yaml": "a: 1\n"}, "a new environment is a new directory")
    out = io.StringIO()
    assert envs_command(repo.path, "HEAD", "json", out=out) == 0
    rows = json.loads(out.getvalue())
    assert [r["name"] for r in rows] == ["dev", "qa"]
    assert rows[0] == {"name": "dev", "path": "envs/dev", "source": "default",
                       "target": "git:deploy/dev", "generator": "apps", "onRemove": "prune"}
    out = io.StringIO()
    assert first is not None
    assert envs_command(repo.path, first[:10], "text", out=out) == 0
    assert out.getvalue().splitlines()[-1] == "1 environment(s), 1 generated"


def test_conveyor_envs_reports_a_bad_revision_or_config(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"conveyor.yaml": "generators: [{list: {elements: [{}]}}]\n"})
    err = io.StringIO()
    assert envs_command(repo.path, "HEAD", "text", err=err) == 1
    assert "conveyor.yaml:1: generators.0: needs a 'template'" in err.getvalue()
    err = io.StringIO()
    assert envs_command(repo.path, "no-such-branch", "text", err=err) == 1
    assert "'no-such-branch' is not a revision" in err.getvalue()
