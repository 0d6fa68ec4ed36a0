"""Argo projects (``argoproj.io``): Rollouts, AnalysisRun, Experiment, Workflows, Argo CD apps.

Status APIs: Argo Rollouts' ``RolloutStatus`` (``phase`` Healthy/Progressing/Paused/Degraded and
``message`` since v1.0, ``pauseConditions``, ``InvalidSpec``/``Progressing`` conditions;
``observedGeneration`` is a pod-template hash string in releases before v1.0), AnalysisRun and
Experiment ``status.phase`` (Pending, Running, Successful, Failed, Error, Inconclusive), Argo
Workflows' ``status.phase`` (Pending, Running, Succeeded, Failed, Error) and CronWorkflow's
``spec.suspend`` and ``SubmissionError``/``SpecError`` conditions, Argo CD's
``Application.status.health``. Verdicts and messages follow Argo CD's shipped Lua checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health import kstatus
from orchestrator.domain.health.crs.common import by_phase, no_health
from orchestrator.domain.health.status import Health, HealthStatus

PROJECT = "argo"
GROUP = "argoproj.io"

_ROLLOUT_PHASES = MappingProxyType({
    "Healthy": Health.HEALTHY, "Progressing": Health.PROGRESSING,
    "Degraded": Health.DEGRADED, "Paused": Health.SUSPENDED,
})


def rollout(obj: Mapping[str, Any]) -> HealthStatus:
    for condition in f.conditions(obj):
        if condition.get("type") == "InvalidSpec":
            return HealthStatus(Health.DEGRADED, f.message_of(condition))
    if f.field(obj, "status") is None or kstatus.generation_lag(obj) is not None \
            or not _workload_observed(obj):
        return HealthStatus(Health.PROGRESSING, "Waiting for rollout spec update to be observed")
    phase = f.string(obj, "status", "phase")
    if phase:
        health = _ROLLOUT_PHASES.get(phase, Health.UNKNOWN)
        return HealthStatus(health, f.string(obj, "status", "message"))
    return _legacy_rollout(obj)


def _workload_observed(obj: Mapping[str, Any]) -> bool:
    """Rollouts v1.3+ with a ``workloadRef``: has the referenced Deployment's generation (an
    annotation) been observed?"""
    if f.field(obj, "spec", "workloadRef") is None:
        return True
    annotations = f.field(obj, "metadata", "annotations") or {}
    wanted = f.loose_integer(annotations.get("rollout.argoproj.io/workload-generation"))
    seen = f.loose_integer(f.field(obj, "status", "workloadObservedGeneration"))
    return wanted is None or wanted == seen


def _legacy_rollout(obj: Mapping[str, Any]) -> HealthStatus:
    """Rollouts before v1.0 report no phase: Argo CD's older reading of conditions, pause,
    replica counts and which pod hash the services or the canary's stable ReplicaSet serve."""
    for condition in f.conditions(obj):
        if condition.get("type") == "Progressing" and condition.get("reason") in (
                "RolloutAborted", "ProgressDeadlineExceeded"):
            return HealthStatus(Health.DEGRADED, f.message_of(condition))
    if f.field(obj, "status", "verifyingPreview") is True or f.boolean(obj, "spec", "paused") \
            or f.items(obj, "status", "pauseConditions"):
        return HealthStatus(Health.SUSPENDED, "Rollout is paused")
    current = f.field(obj, "status", "currentPodHash")
    if current is None:
        return HealthStatus(Health.PROGRESSING,
                            "Waiting for rollout to finish: status has not been reconciled.")
    replicas = f.loose_integer(f.field(obj, "spec", "replicas"))
    updated = f.integer(obj, "status", "updatedReplicas")
    if updated < (1 if replicas is None else replicas):
        return HealthStatus(Health.PROGRESSING,
                            "Waiting for roll out to finish: More replicas need to be updated")
    canary = f.field(obj, "spec", "strategy", "canary") is not None
    if canary and f.integer(obj, "status", "replicas") > updated:
        return HealthStatus(Health.PROGRESSING, "Waiting for roll out to finish: old replicas "
                            "are pending termination")
    if f.integer(obj, "status", "availableReplicas") < updated:
        return HealthStatus(Health.PROGRESSING, "Waiting for roll out to finish: updated "
                            "replicas are still becoming available")
    if f.field(obj, "spec", "strategy", "blueGreen") is not None:
        if f.field(obj, "status", "blueGreen", "activeSelector") != current:
            return HealthStatus(Health.PROGRESSING, "active service cutover pending")
        return HealthStatus(Health.HEALTHY, "")
    stable = f.field(obj, "status", "stableRS") or f.field(obj, "status", "canary", "stableRS")
    if canary and stable is not None and stable != current:
        return HealthStatus(Health.PROGRESSING, "Waiting for rollout to finish steps")
    return HealthStatus(Health.HEALTHY, "")


_ANALYSIS_PHASES = MappingProxyType({
    "Pending": Health.PROGRESSING, "Running": Health.PROGRESSING,
    "Successful": Health.HEALTHY, "Failed": Health.DEGRADED,
    "Error": Health.DEGRADED, "Inconclusive": Health.UNKNOWN,
})
_ANALYSIS_MESSAGES = MappingProxyType({
    "Pending": "Analysis run is running", "Running": "Analysis run is running",
    "Successful": "Analysis run completed successfully",
    "Failed": "Analysis run failed", "Error": "Analysis run had an error",
    "Inconclusive": "Analysis run was inconclusive",
})


def analysis_run(obj: Mapping[str, Any]) -> HealthStatus:
    phase = f.string(obj, "status", "phase")
    if phase in ("Pending", "Running"):  # Argo CD's check ignores status.message while running
        return HealthStatus(Health.PROGRESSING, "Analysis run is running")
    return by_phase(obj, _ANALYSIS_PHASES, messages=_ANALYSIS_MESSAGES,
                    waiting="Waiting for analysis run to finish: status has not been reconciled.")


def experiment(obj: Mapping[str, Any]) -> HealthStatus:
    return by_phase(obj, _ANALYSIS_PHASES, waiting="Waiting for experiment to start")


_WORKFLOW_PHASES = MappingProxyType({
    "Pending": Health.PROGRESSING, "Running": Health.PROGRESSING,
    "Succeeded": Health.HEALTHY, "Failed": Health.DEGRADED,
    "Error": Health.DEGRADED,
})


def workflow(obj: Mapping[str, Any]) -> HealthStatus:
    return by_phase(obj, _WORKFLOW_PHASES, waiting="")


def cron_workflow(obj: Mapping[str, Any]) -> HealthStatus:
    for condition in f.conditions(obj):
        if condition.get("type") in ("SubmissionError", "SpecError") \
                and condition.get("status") == "True":
            return HealthStatus(Health.DEGRADED, f.message_of(condition))
    if f.boolean(obj, "spec", "suspend"):
        return HealthStatus(Health.SUSPENDED, "CronWorkflow is suspended")
    return HealthStatus(Health.HEALTHY, "")


def application(obj: Mapping[str, Any]) -> HealthStatus:
    """An Argo CD Application's own health (the customization Argo CD's docs give)."""
    status = f.string(obj, "status", "health", "status")
    try:
        health = Health(status) if status else Health.PROGRESSING
    except ValueError:
        health = Health.UNKNOWN
    return HealthStatus(health, f.string(obj, "status", "health", "message"))


KINDS = MappingProxyType({
    (GROUP, "Rollout"): rollout,
    (GROUP, "AnalysisRun"): analysis_run,
    (GROUP, "Experiment"): experiment,
    (GROUP, "Workflow"): workflow,
    (GROUP, "CronWorkflow"): cron_workflow,
    (GROUP, "WorkflowTemplate"): no_health,
    (GROUP, "ClusterWorkflowTemplate"): no_health,
    (GROUP, "AnalysisTemplate"): no_health,
    (GROUP, "ClusterAnalysisTemplate"): no_health,
    (GROUP, "AppProject"): no_health,
    (GROUP, "Application"): application,
})
