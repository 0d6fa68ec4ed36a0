"""Flux-style CEL health checks from conveyor.yaml: order, errors, config checks."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.config import parse_config
from orchestrator.domain.health import Health, HealthStatus
from orchestrator.errors import ConfigError
from orchestrator.health_rules.cel import CelCheck, CelError, compile_check, evaluate
from orchestrator.health_rules.engine import HealthEngine, repo_rules
from services.git_watcher.config_check import check_config
from services.git_watcher.decide import env_payload

CONFIG = """\
environments:
  prod: {path: envs/prod}
health:
  checks:
    - apiVersion: widgets.example.com/v1
      kind: Widget
      inProgress: "status.phase == 'Spinning' && status.rpm < 1000"
      failed: "status.phase == 'Stuck'"
      current: "status.phase == 'Spinning'"
    - apiVersion: cert-manager.io/v1
      kind: Certificate
      current: "status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')"
"""


def widget(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "generation": 1}, "status": status}


@pytest.fixture(scope="module")
def engine() -> HealthEngine:
    return HealthEngine(repo_rules(parse_config(CONFIG).health))


def test_expressions_are_evaluated_in_fluxs_order(engine: HealthEngine) -> None:
    slow = engine.evaluate(widget(phase="Spinning", rpm=10))
    assert slow.verdict == HealthStatus(Health.PROGRESSING, "inProgress: status.phase == "
                                        "'Spinning' && status.rpm < 1000")
    assert slow.rule == "cel:conveyor.yaml:5"
    assert engine.evaluate(widget(phase="Spinning", rpm=1200)).status is Health.HEALTHY
    assert engine.evaluate(widget(phase="Stuck", rpm=0)).status is Health.DEGRADED
    nothing = engine.evaluate(widget(phase="Starting", rpm=0))
    assert nothing.verdict == HealthStatus(Health.PROGRESSING, "no health expression is true "
                                           "yet")


def test_a_check_overrides_the_built_in_rule(engine: HealthEngine) -> None:
    certificate = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": "c"},
                   "status": {"conditions": [{"type": "Issuing", "status": "True"},
                                             {"type": "Ready", "status": "True"}]}}
    result = engine.evaluate(certificate)
    assert (result.status, result.rule) == (Health.HEALTHY, "cel:conveyor.yaml:10")
    other_version = {**certificate, "apiVersion": "cert-manager.io/v1beta1"}
    assert engine.evaluate(other_version).rule == "built-in:cert-manager"


def test_a_missing_field_keeps_waiting_with_the_reason(engine: HealthEngine) -> None:
    verdict = engine.evaluate(widget(phase="Spinning")).verdict
    assert verdict is not None and verdict.status is Health.PROGRESSING
    assert verdict.message.startswith("conveyor.yaml:5: inProgress: cannot evaluate:")
    no_status = {"apiVersion": "widgets.example.com/v1", "kind": "Widget", "metadata": {}}
    assert engine.evaluate(no_status).status is Health.PROGRESSING


def test_a_stale_generation_is_progressing_before_any_expression(engine: HealthEngine) -> None:
    stale = {**widget(phase="Spinning", rpm=1200, observedGeneration=1),
             "metadata": {"name": "w", "generation": 2}}
    assert engine.evaluate(stale).verdict == HealthStatus(
        Health.PROGRESSING, "Waiting for the controller to observe generation 2 (observed 1)")


def test_an_expression_that_is_not_a_bool_keeps_waiting() -> None:
    compiled = compile_check(CelCheck("v1", "X", {"current": "status.phase"}))
    verdict = evaluate(compiled, {"status": {"phase": "Running"}})
    assert verdict == HealthStatus(Health.PROGRESSING, "conveyor.yaml: current: must give a "
                                                       "bool, gave str")


def test_a_syntax_error_is_a_config_error_with_the_line() -> None:
    bad = CONFIG.replace("status.phase == 'Stuck'", "status.phase ==")
    with pytest.raises(ConfigError) as caught:
        check_config(parse_config(bad))
    assert caught.value.line == 5 and caught.value.field == "health.checks"
    assert "failed: Failed to parse expression" in str(caught.value)
    with pytest.raises(CelError, match=r"conveyor\.yaml:5: failed:"):
        repo_rules(parse_config(bad).health)


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    ("health: {checks: [{apiVersion: v1, kind: X}]}\n", 5, "health.checks.0",
     "needs 'current'"),
    ("health: {checks: [{apiVersion: v1, kind: X, current: 'true', curent: 'x'}]}\n", 5,
     "health.checks.0.curent", "did you mean 'current'"),
    ("health: {customizations: ../outside}\n", 5, "health.customizations",
     "points outside the repository"),
    ("health: {argocdCM: cm.yaml}\n", 5, "health.argocdCM", "unknown key"),
    ("health: {checks: {a: b}}\n", 5, "health.checks", "must be a list"),
])
def test_bad_health_blocks_name_line_and_field(text: str, line: int, field: str,
                                               words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("environments:\n  prod:\n    path: envs/prod\n\n" + text)
    assert (caught.value.line, caught.value.field) == (line, field)
    assert words in str(caught.value)


def test_the_health_block_travels_with_every_environment() -> None:
    config = parse_config(CONFIG + "  customizations: health/\n")
    payload = env_payload(config.environments["prod"])
    assert payload["health"]["customizations"] == "health"
    assert payload["health"]["checks"][0]["line"] == 5
    plain = parse_config("environments:\n  prod: {path: envs/prod}\n")
    assert "health" not in env_payload(plain.environments["prod"])
