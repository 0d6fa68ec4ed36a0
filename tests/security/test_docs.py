"""The README's operator/repository table and docs/security.md stay true."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from conveyor.cli import build_parser
from orchestrator.adapters import git_tree
from orchestrator.domain.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.rendering.settings import OPERATOR_ONLY
from services.git_watcher.config_check import check_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECURITY = (ROOT / "docs" / "security.md").read_text()
SECTION = SECURITY.split("## The committer (repository) principal", 1)[1].split("\n## ", 1)[0]


def table_rows() -> list[list[str]]:
    """The rows of the first table after the heading, header and rule left out."""
    lines = README[README.index("### Operator vs repository settings"):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows: list[list[str]] = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


REFUSED = sorted(set(re.findall(r"refused in conveyor.yaml: `render\.([\w.]+)`", README)))


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_operator_flag_of_the_table_exists_on_up_run_and_render() -> None:
    flags = {f for who, how in ((r[1], r[2]) for r in table_rows()) if who == "operator"
             for f in re.findall(r"`(--[a-z-]+)", how)}
    assert {"--kustomize-binary", "--helm-binary", "--allow-remote-bases", "--env-allow",
            "--secrets-dir", "--allow-local-path"} <= flags
    commands = subcommands()
    for command in ("up", "run"):
        known = {o for a in commands[command]._actions for o in a.option_strings}
        assert flags - {"--repo"} <= known, command
    render = {o for a in commands["render"]._actions for o in a.option_strings}
    assert {"--kustomize-binary", "--helm-binary", "--allow-remote-bases"} <= render


@pytest.mark.parametrize("key", REFUSED)
def test_every_refused_key_of_the_table_is_refused(key: str) -> None:
    assert len(REFUSED) == 3
    block, name = key.split(".")
    assert (block, name) in OPERATOR_ONLY
    text = f"environments:\n  app:\n    path: app\n    render:\n      {block}: {{{name}: x}}\n"
    with pytest.raises(ConfigError, match="operator configuration"):
        check_config(parse_config(text))


def test_the_security_section_names_existing_tests_and_true_limits() -> None:
    named = set(re.findall(r"`(test_\w+\.py)`", SECTION))
    assert named, "the section cites its tests"
    for name in named:
        assert (ROOT / "tests" / "security" / name).is_file(), name
    assert "64 MiB per file" in SECTION and git_tree.MAX_BLOB_BYTES == 64 << 20


def test_the_operator_settings_also_come_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What k8s/base's conveyor-config sets (CONVEYOR_ENV_ALLOW, empty: none) is read."""
    import yaml

    from conveyor.options import settings_from_args
    from orchestrator.secrets import SecretPolicy

    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    literals = next(g["literals"] for g in base["configMapGenerator"]
                    if g["name"] == "conveyor-config")
    assert "CONVEYOR_ENV_ALLOW=" in literals
    monkeypatch.setenv("CONVEYOR_ENV_ALLOW", "")
    args = build_parser().parse_args(["run", "notifier", "--nats", "nats://x:4222"])
    assert settings_from_args(args).secrets == SecretPolicy()
    monkeypatch.setenv("CONVEYOR_ENV_ALLOW", "SLACK_*,PROD_*")
    monkeypatch.setenv("CONVEYOR_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("CONVEYOR_ALLOW_LOCAL_PATH", str(tmp_path))
    settings = settings_from_args(build_parser().parse_args(["run", "notifier", "--nats", "nats://x"]))
    assert settings.secrets == SecretPolicy(("SLACK_*", "PROD_*"), (str(tmp_path),))
    assert settings.allow_local_paths == (str(tmp_path),)
