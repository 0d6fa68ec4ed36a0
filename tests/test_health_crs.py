"""Built-in rules for custom resources and the kstatus order, off fixtures in Argo CD's layout.

``tests/fixtures/health/crs/<group>/<Kind>/health_test.yaml`` lists cases as Argo CD's
``resource_customizations`` do (``healthStatus: {status, message}``, ``inputPath``); the
objects are written here from each project's documented status API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.health import Health, HealthStatus, evaluate, kstatus

CRS = Path(__file__).parent / "fixtures" / "health" / "crs"


def _cases() -> list[tuple[str, Path, dict[str, Any]]]:
    found = []
    for spec in sorted(CRS.rglob("health_test.yaml")):
        for test in yaml.safe_load(spec.read_text())["tests"]:
            found.append((f"{spec.parent.relative_to(CRS)}/{test['inputPath']}",
                          spec.parent / test["inputPath"], test["healthStatus"]))
    return found


CASES = _cases()


@pytest.mark.parametrize(("label", "path", "expected"), CASES, ids=[c[0] for c in CASES])
def test_builtin_rule(label: str, path: Path, expected: dict[str, str]) -> None:
    result = evaluate(yaml.safe_load(path.read_text()))
    assert result.has_rule and result.rule.startswith("built-in:"), result.rule
    assert result.verdict is not None
    assert result.verdict.status.value == expected["status"]
    if "message" in expected:
        assert result.verdict.message == expected["message"]


def test_every_project_of_the_issue_has_fixtures() -> None:
    groups = {path.parent.parent.name for path in CRS.rglob("health_test.yaml")}
    assert {"argoproj.io", "cert-manager.io", "pkg.crossplane.io", "kustomize.toolkit.fluxcd.io",
            "external-secrets.io", "keda.sh", "serving.knative.dev", "networking.istio.io",
            "kafka.strimzi.io", "bitnami.com", "monitoring.coreos.com"} <= groups


def test_fixtures_cover_every_status() -> None:
    statuses = {expected["status"] for _, _, expected in CASES}
    assert statuses == {h.value for h in Health}


def test_an_absent_custom_resource_is_missing() -> None:
    result = evaluate(None)
    assert result.status is Health.MISSING


def test_a_custom_resource_being_deleted_is_progressing_whatever_its_rule() -> None:
    obj = yaml.safe_load((CRS / "keda.sh/ScaledObject/testdata/fallback.yaml").read_text())
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert evaluate(obj).verdict == HealthStatus(Health.PROGRESSING, "Pending deletion")
    obj["metadata"]["finalizers"] = ["keda.sh/finalizer", "example.com/finalizer"]
    assert evaluate(obj).verdict == HealthStatus(
        Health.PROGRESSING, "Pending deletion; blocked by finalizers: keda.sh/finalizer, "
                            "example.com/finalizer")


def test_objects_without_a_name_are_assessed() -> None:
    obj = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
           "metadata": {"generateName": "build-"}, "status": {"phase": "Succeeded"}}
    assert evaluate(obj).status is Health.HEALTHY
    assert evaluate({"apiVersion": "example.com/v1", "kind": "Thing"}).has_rule is False


# -- kstatus --------------------------------------------------------------------------------

def _obj(conditions: list[dict[str, str]], generation: Any = 2, observed: Any = 2) -> dict[
        str, Any]:
    return {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "generation": generation},
            "status": {"observedGeneration": observed, "conditions": conditions}}


def test_kstatus_generation_before_conditions() -> None:
    verdict = kstatus.assess(_obj([{"type": "Ready", "status": "True"}], 3, 2))
    assert verdict == HealthStatus(Health.PROGRESSING, "Waiting for the controller to observe "
                                   "generation 3 (observed 2)")


@pytest.mark.parametrize("observed", ["6c9f8b7d5", 1.5, True, {"x": 1}])
def test_kstatus_skips_generations_it_cannot_compare(observed: Any) -> None:
    verdict = kstatus.assess(_obj([{"type": "Ready", "status": "True"}], 3, observed))
    assert verdict is not None and verdict.status is Health.HEALTHY


def test_kstatus_compares_a_generation_written_as_digits() -> None:
    verdict = kstatus.assess(_obj([{"type": "Ready", "status": "True"}], 3, "2"))
    assert verdict is not None and verdict.status is Health.PROGRESSING


def test_kstatus_first_of_reconciling_and_stalled_wins_then_ready() -> None:
    stalled_first = [{"type": "Stalled", "status": "True", "message": "stuck"},
                     {"type": "Reconciling", "status": "True"},
                     {"type": "Ready", "status": "True"}]
    assert kstatus.assess(_obj(stalled_first)) == HealthStatus(Health.DEGRADED, "stuck")
    reconciling_first = [stalled_first[1], stalled_first[0], stalled_first[2]]
    verdict = kstatus.assess(_obj(reconciling_first))
    assert verdict is not None and verdict.status is Health.PROGRESSING
    assert kstatus.assess(_obj([{"type": "Ready", "status": "False", "reason": "Progressing"}])
                          ).status is Health.PROGRESSING  # type: ignore[union-attr]


def test_kstatus_current_when_the_controller_caught_up_without_conditions() -> None:
    verdict = kstatus.assess(_obj([]))
    assert verdict == HealthStatus(Health.HEALTHY, "Resource is current (observed generation 2)")
    no_status = {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
                 "metadata": {"name": "w"}}
    assert kstatus.assess(no_status) is None
