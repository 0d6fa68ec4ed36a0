"""Pod health, as gitops-engine ``getCorev1PodHealth``.

- With ``restartPolicy: Always``, a container waiting for a reason that starts with ``Err`` or
  ends with ``Error`` or ``BackOff`` (CrashLoopBackOff, ImagePullBackOff, ErrImagePull,
  CreateContainerConfigError...) makes the pod Degraded whatever its phase. Argo CD limits this
  to ``Always`` so that a hook pod (``Never``/``OnFailure``) is not failed prematurely.
- Phase ``Pending`` is Progressing, ``Succeeded`` Healthy, ``Failed`` Degraded with the pod's
  message, else the first terminated container's message, OOMKilled, or non-zero exit code.
- Phase ``Running``: with ``restartPolicy: Always`` (or the annotation
  ``argocd.argoproj.io/ignore-restart-policy``) Healthy when the ``Ready`` condition is True,
  Degraded when not ready and a container has terminated before, else Progressing. A running
  pod with ``Never``/``OnFailure`` has a finite life (a hook, a job's pod): Progressing.
- Any other phase is Unknown.

Deviations, both deliberate: an absent ``restartPolicy`` reads as ``Always``, the API server's
default (a live pod always has it; hand-written fixtures often do not); a waiting container
with no message is described as ``container "name": Reason`` instead of an empty message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain.health import fields as f
from orchestrator.domain.health.status import Health, HealthStatus

IGNORE_RESTART_POLICY_ANNOTATION = "argocd.argoproj.io/ignore-restart-policy"


def _failing_reason(reason: str) -> bool:
    return reason.startswith("Err") or reason.endswith("Error") or reason.endswith("BackOff")


def _fail_message(container: Mapping[str, Any]) -> str:
    terminated = f.field(container, "state", "terminated")
    if not isinstance(terminated, Mapping):
        return ""
    if message := f.string(terminated, "message"):
        return message
    if f.string(terminated, "reason") == "OOMKilled":
        return "OOMKilled"
    if code := f.integer(terminated, "exitCode"):
        return f'container "{f.string(container, "name")}" failed with exit code {code}'
    return ""


def assess(obj: Mapping[str, Any]) -> HealthStatus:
    restart_policy = f.string(obj, "spec", "restartPolicy") or "Always"
    containers = f.mappings(obj, "status", "containerStatuses")
    message = f.string(obj, "status", "message")
    if restart_policy == "Always":
        problems = []
        for container in containers:
            waiting = f.field(container, "state", "waiting")
            if isinstance(waiting, Mapping) and _failing_reason(f.string(waiting, "reason")):
                problems.append(f.string(waiting, "message") or
                                f'container "{f.string(container, "name")}": '
                                f'{f.string(waiting, "reason")}')
        if problems:
            return HealthStatus(Health.DEGRADED, ", ".join(problems))

    phase = f.string(obj, "status", "phase")
    if phase == "Pending":
        return HealthStatus(Health.PROGRESSING, message)
    if phase == "Succeeded":
        return HealthStatus(Health.HEALTHY, message)
    if phase == "Failed":
        if message:
            return HealthStatus(Health.DEGRADED, message)
        for container in [*f.mappings(obj, "status", "initContainerStatuses"), *containers]:
            if failure := _fail_message(container):
                return HealthStatus(Health.DEGRADED, failure)
        return HealthStatus(Health.DEGRADED)
    if phase == "Running":
        annotations = f.field(obj, "metadata", "annotations")
        ignore_policy = isinstance(annotations, Mapping) and \
            IGNORE_RESTART_POLICY_ANNOTATION in annotations
        if ignore_policy or restart_policy == "Always":
            ready = f.condition(obj, "Ready")
            if ready is not None and ready.get("status") == "True":
                return HealthStatus(Health.HEALTHY, message)
            for container in containers:
                if f.field(container, "lastState", "terminated") is not None:
                    return HealthStatus(Health.DEGRADED, message)
            return HealthStatus(Health.PROGRESSING, message)
        if restart_policy in ("OnFailure", "Never"):
            return HealthStatus(Health.PROGRESSING, message)
    return HealthStatus(Health.UNKNOWN, message)
