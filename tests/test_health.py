"""Health assessment, tested off YAML fixtures as gitops-engine does (tests/fixtures/health)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.health import (
    MISSING,
    Health,
    HealthStatus,
    assess,
    builtin_rule,
    evaluate,
    is_worse,
    worst,
)

FIXTURES = Path(__file__).parent / "fixtures" / "health"

H, S, P, M, D, U = (Health.HEALTHY, Health.SUSPENDED, Health.PROGRESSING, Health.MISSING,
                    Health.DEGRADED, Health.UNKNOWN)

# fixture -> (expected status, None for "no health notion"; expected message or None to skip)
CASES: dict[str, tuple[Health | None, str | None]] = {
    "deployment-healthy.yaml": (H, ""),
    "deployment-progressing.yaml": (P, "Waiting for rollout to finish: 1 out of 3 new replicas "
                                       "have been updated..."),
    "deployment-progressing-old-replicas.yaml": (P, "Waiting for rollout to finish: 1 old "
                                                    "replicas are pending termination..."),
    "deployment-progressing-unavailable.yaml": (P, "Waiting for rollout to finish: 2 of 3 "
                                                   "updated replicas are available..."),
    "deployment-progressing-generation.yaml": (P, "Waiting for rollout to finish: observed "
                                                  "deployment generation less than desired "
                                                  "generation"),
    "deployment-suspended.yaml": (S, "Deployment is paused"),
    "deployment-degraded.yaml": (D, 'Deployment "web" exceeded its progress deadline'),
    "deployment-malformed.yaml": (U, "spec.replicas must be an integer, got 'three'"),
    "statefulset-healthy.yaml": (H, "partitioned roll out complete: 3 new pods have been "
                                    "updated..."),
    "statefulset-progressing.yaml": (P, "Waiting for 2 pods to be ready..."),
    "statefulset-partition-progressing.yaml": (P, "Waiting for partitioned roll out to finish: "
                                                  "1 out of 3 new pods have been updated..."),
    "statefulset-partition-healthy.yaml": (H, None),
    "statefulset-ondelete.yaml": (H, "statefulset has 3 ready pods (0 updated)"),
    "statefulset-revision-progressing.yaml": (P, "waiting for statefulset rolling update to "
                                                 "complete 1 pods at revision db-84b7f6d5c..."),
    "statefulset-unobserved.yaml": (P, "Waiting for statefulset spec update to be observed..."),
    "daemonset-healthy.yaml": (H, ""),
    "daemonset-progressing.yaml": (P, 'Waiting for daemon set "node-agent" rollout to finish: '
                                      "2 out of 4 new pods have been updated..."),
    "daemonset-progressing-unavailable.yaml": (P, 'Waiting for daemon set "node-agent" rollout '
                                                  "to finish: 3 of 4 updated pods are "
                                                  "available..."),
    "daemonset-ondelete.yaml": (H, "daemon set 1 out of 4 new pods have been updated"),
    "daemonset-progressing-generation.yaml": (P, None),
    "replicaset-healthy.yaml": (H, ""),
    "replicaset-progressing.yaml": (P, "Waiting for rollout to finish: 1 out of 2 new replicas "
                                       "are available..."),
    "replicaset-degraded.yaml": (D, 'pods "web-7d9c6b8f5-" is forbidden: exceeded quota: '
                                    "compute, requested: cpu=2, used: cpu=8, limited: cpu=8"),
    "pod-running-ready.yaml": (H, ""),
    "pod-running-not-ready.yaml": (P, ""),
    "pod-running-restarted.yaml": (D, None),
    "pod-crashloop.yaml": (D, "back-off 5m0s restarting failed container=web "
                              "pod=web-7d9c6b8f5-abcde_shop"),
    "pod-imagepullbackoff.yaml": (D, 'Back-off pulling image '
                                     '"registry.example.com/web:does-not-exist"'),
    "pod-errimagepull.yaml": (D, 'container "web": ErrImagePull'),
    "pod-pending.yaml": (P, None),
    "pod-succeeded.yaml": (H, ""),
    "pod-failed.yaml": (D, 'container "migrate" failed with exit code 2'),
    "pod-failed-oomkilled.yaml": (D, "OOMKilled"),
    "pod-running-restart-never.yaml": (P, None),
    "pod-running-restart-never-ignore-annotation.yaml": (H, None),
    "pod-hook-imagepullbackoff.yaml": (P, None),
    "pod-deletion.yaml": (P, "Pending deletion"),
    "pod-unknown.yaml": (U, "the node was unreachable"),
    "job-running.yaml": (P, ""),
    "job-complete.yaml": (H, "Reached expected number of succeeded pods"),
    "job-failed.yaml": (D, "Job has reached the specified backoff limit"),
    "job-suspended.yaml": (S, "Job suspended"),
    "job-resumed.yaml": (P, ""),
    "cronjob-suspended.yaml": (H, "CronJob is Suspended"),
    "cronjob-healthy.yaml": (H, "CronJob has completed its last execution successfully"),
    "cronjob-degraded.yaml": (D, "CronJob has not completed its last execution successfully"),
    "cronjob-degraded-offsets.yaml": (D, None),
    "cronjob-never-scheduled.yaml": (H, "CronJob has not been scheduled yet"),
    "cronjob-never-succeeded.yaml": (H, "The CronJob never completed successfully. It may not be "
                                        "healthy"),
    "cronjob-active.yaml": (H, "The job is running. Its last execution may not have been "
                               "successful"),
    "cronjob-no-status.yaml": (H, "CronJob has not been scheduled yet"),
    "pvc-bound.yaml": (H, ""),
    "pvc-pending.yaml": (P, ""),
    "pvc-lost.yaml": (D, ""),
    "service-clusterip.yaml": (H, ""),
    "service-loadbalancer.yaml": (H, ""),
    "service-loadbalancer-pending.yaml": (P, None),
    "ingress-healthy.yaml": (H, ""),
    "ingress-progressing.yaml": (P, None),
    "hpa-v2-healthy.yaml": (H, "recommended size matches current size"),
    "hpa-v2-degraded.yaml": (D, "the HPA was unable to compute the replica count: failed to get "
                                "memory utilization"),
    "hpa-v2-degraded-external.yaml": (D, "unable to get external metric shop/queue_depth"),
    "hpa-v2-disabled.yaml": (H, None),
    "hpa-v2-progressing.yaml": (P, "Waiting to Autoscale"),
    "hpa-v1-healthy.yaml": (H, "recommended size matches current size"),
    "hpa-v1-degraded.yaml": (D, None),
    "hpa-v1-progressing.yaml": (P, "Waiting to Autoscale"),
    "hpa-v1-malformed.yaml": (U, None),
    "apiservice-available.yaml": (H, "Passed: all checks passed"),
    "apiservice-unavailable.yaml": (P, 'MissingEndpoints: endpoints for service/metrics-server '
                                       'in "kube-system" have no addresses'),
    "crd-established.yaml": (H, "CRD is healthy"),
    "crd-not-established.yaml": (D, "CRD is not established: not all names are accepted"),
    "crd-installing.yaml": (P, None),
    "crd-names-rejected.yaml": (D, 'CRD names have not been accepted: "widgets" is already in '
                                   "use"),
    "custom-ready.yaml": (H, "Applied revision: main@sha1:4b825dc6"),
    "custom-not-ready.yaml": (D, 'Issuer "letsencrypt" not found'),
    "custom-ready-progressing.yaml": (P, "Running 'upgrade' action with timeout of 5m0s"),
    "custom-reconciling.yaml": (P, "Building manifests for revision main@sha1:5c1f"),
    "custom-stalled.yaml": (D, None),
    "custom-stale-generation.yaml": (P, "Waiting for the controller to observe generation 2 "
                                        "(observed 1)"),
    "custom-available.yaml": (H, "MinimumReplicasAvailable"),
    "custom-no-conditions.yaml": (None, None),
    "configmap.yaml": (None, None),
    "secret.yaml": (None, None),
}


def load(name: str) -> dict[str, Any]:
    obj = yaml.safe_load((FIXTURES / name).read_text())
    assert isinstance(obj, dict)
    return obj


def assert_health(name: str, expected: Health | None, message: str | None = None) -> None:
    result = assess(load(name))
    if expected is None:
        assert result is None, f"{name}: expected no health, got {result}"
        return
    assert result is not None, f"{name}: expected {expected}, got no health"
    assert result.status is expected, f"{name}: expected {expected}, got {result}"
    if message is not None:
        assert result.message == message


@pytest.mark.parametrize(("name", "expected", "message"),
                         [(name, *case) for name, case in sorted(CASES.items())])
def test_fixture(name: str, expected: Health | None, message: str | None) -> None:
    assert_health(name, expected, message)


def test_every_fixture_has_an_expectation() -> None:
    on_disk = {path.name for path in FIXTURES.glob("*.yaml")}
    assert on_disk == set(CASES)


def test_every_status_is_covered_by_a_fixture() -> None:
    covered = {expected for expected, _ in CASES.values()}
    assert covered >= set(Health) - {Health.MISSING}


def test_a_missing_object_is_missing() -> None:
    assert assess(None) == MISSING
    assert assess(None) == HealthStatus(Health.MISSING, "Not found in the cluster")


def test_kinds_without_a_check_fall_back_to_kstatus() -> None:
    assert builtin_rule("example.com", "Widget") is None
    assert builtin_rule("apps", "Deployment") is not None
    assert evaluate(load("custom-stale-generation.yaml")).rule in ("kstatus", "built-in:flux")
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
              "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert evaluate(widget).rule == "kstatus"


def test_no_notion_of_health_is_not_the_same_as_no_rule() -> None:
    configmap = evaluate(load("configmap.yaml"))
    assert (configmap.verdict, configmap.rule, configmap.has_rule) == (None, "built-in", True)
    unknown = evaluate(load("custom-no-conditions.yaml"))
    assert (unknown.verdict, unknown.has_rule) == (None, False)
    assert str(unknown) == "n/a (no health rule)"


def test_every_version_of_a_group_uses_the_same_check() -> None:
    obj = load("deployment-degraded.yaml")
    for api_version in ("apps/v1", "apps/v1beta2", "extensions/v1beta1"):
        assert_result = assess({**obj, "apiVersion": api_version})
        assert assert_result is not None and assert_result.status is Health.DEGRADED
    # A Deployment of another group is a custom resource: its conditions decide, and this one
    # says Available, although its Progressing condition exceeded the deadline.
    other = assess({**obj, "apiVersion": "example.com/v1"})
    assert other == HealthStatus(Health.HEALTHY, "MinimumReplicasAvailable")


def test_an_object_without_status_is_progressing_not_healthy() -> None:
    # A freshly rendered manifest has no status: the rollout has not been observed yet.
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                  "spec": {"replicas": 2}}
    result = assess(deployment)
    assert result is not None and result.status is Health.PROGRESSING


def test_the_pod_waiting_check_applies_only_to_restart_policy_always() -> None:
    pod = load("pod-crashloop.yaml")
    pod["spec"]["restartPolicy"] = "OnFailure"
    result = assess(pod)
    assert result is not None and result.status is Health.PROGRESSING


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                                    "CreateContainerConfigError", "InvalidImageName"])
def test_failing_waiting_reasons_are_degraded(reason: str) -> None:
    pod = load("pod-imagepullbackoff.yaml")
    pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] = reason
    result = assess(pod)
    expected = Health.PROGRESSING if reason == "InvalidImageName" else Health.DEGRADED
    assert result is not None and result.status is expected


# -- the ordered set ------------------------------------------------------------------------

def test_severity_order_is_gitops_engines() -> None:
    assert sorted(Health, key=lambda h: h.severity) == [H, S, P, M, D, U]
    assert H < S < P < M < D < U
    assert max(Health) is U and min(Health) is H


def test_values_are_argo_cds_names() -> None:
    assert [h.value for h in Health] == ["Healthy", "Suspended", "Progressing", "Missing",
                                         "Degraded", "Unknown"]
    assert Health("Degraded") is Health.DEGRADED


def test_worst_of_nothing_is_healthy_and_none_counts_for_nothing() -> None:
    assert worst([]) is Health.HEALTHY
    assert worst([None, None]) is Health.HEALTHY
    assert worst([None, HealthStatus(Health.SUSPENDED)]) is Health.SUSPENDED


def test_worst_takes_statuses_and_healths() -> None:
    assert worst([Health.PROGRESSING, HealthStatus(Health.DEGRADED, "x"), None]) is Health.DEGRADED


health_values = st.sampled_from(list(Health))


@given(st.lists(st.one_of(st.none(), health_values)))
def test_worst_is_the_maximum_by_severity(items: list[Health | None]) -> None:
    present = [h for h in items if h is not None]
    expected = max(present, key=lambda h: h.severity) if present else Health.HEALTHY
    assert worst(items) is expected
    assert worst(reversed(items)) is expected


@given(health_values, health_values)
def test_is_worse_agrees_with_the_order(a: Health, b: Health) -> None:
    assert is_worse(a, b) == (b.severity > a.severity)
    assert not (is_worse(a, b) and is_worse(b, a))


def test_health_status_reads_well() -> None:
    assert str(HealthStatus(Health.DEGRADED, "boom")) == "Degraded (boom)"
    assert str(HealthStatus(Health.HEALTHY)) == "Healthy"
