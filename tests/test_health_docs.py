"""docs/health.md says what the engine does: its conveyor.yaml example parses, compiles and
decides as the text says."""

from __future__ import annotations

import os
import re
from pathlib import Path

from orchestrator.domain.config import parse_config
from orchestrator.domain.health import Health
from orchestrator.health_rules.engine import (
    HealthEngine,
    HealthRules,
    cel_checks,
    customizations_from_env,
)
from orchestrator.health_rules.lua import LuaEngine
from services.git_watcher.decide import is_affected

DOC = Path(__file__).parents[1] / "docs" / "health.md"


def test_the_conveyor_yaml_example_works_as_described() -> None:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    config = parse_config(block.group(1))
    assert config.health["customizations"] == "health"
    assert config.health["argocdConfigMap"] == "argocd-cm.yaml"
    engine = HealthEngine(HealthRules(cel=cel_checks(config.health)))

    def widget(**status: object) -> dict[str, object]:
        return {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
                "metadata": {"name": "w"}, "status": status}

    assert engine.evaluate(widget(phase="Spinning", rpm=10)).status is Health.PROGRESSING
    assert engine.evaluate(widget(phase="Spinning", rpm=1200)).status is Health.HEALTHY
    assert engine.evaluate(widget(phase="Stuck")).status is Health.DEGRADED
    assert engine.evaluate(widget()).status is Health.PROGRESSING  # none true
    other = {"apiVersion": "gizmos.example.com/v1", "kind": "Gizmo", "metadata": {}}
    assert str(engine.evaluate(other)) == "n/a (no health rule)"


def test_operator_trees_come_from_the_flag_or_the_environment() -> None:
    value = os.pathsep.join(["/etc/conveyor/health", "/srv/more"])
    assert customizations_from_env({"CONVEYOR_HEALTH_CUSTOMIZATIONS": value}) == (
        Path("/etc/conveyor/health"), Path("/srv/more"))
    assert customizations_from_env({}) == ()


def test_scripts_get_argo_cds_one_second_limit_and_a_64_mib_runtime() -> None:
    engine = LuaEngine()
    assert (engine.timeout, engine.max_memory) == (1.0, 64 * 1024 * 1024)


def test_a_change_to_the_rule_files_redeploys() -> None:
    config = parse_config("environments:\n  prod: {path: envs/prod}\nhealth:\n"
                          "  customizations: health\n  argocdConfigMap: cm/argocd-cm.yaml\n")
    env = config.environments["prod"]
    assert is_affected(env, ["health/example.com/Widget/health.lua"], lambda e: (),
                       config_counts=False)
    assert is_affected(env, ["cm/argocd-cm.yaml"], lambda e: (), config_counts=False)
    assert not is_affected(env, ["docs/readme.md"], lambda e: (), config_counts=False)
