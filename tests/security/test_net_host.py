"""The host principal: Conveyor runs as a non-root user that cannot write its image, gain
privileges or call unusual system calls, in the Containerfile and in every workload of the
rendered k8s/base (what `kubectl apply -k` would create)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_k8s_manifests import pod_spec, render, workloads

ROOT = Path(__file__).resolve().parents[2]
UID = 10001


def test_the_image_runs_as_uid_10001_and_never_switches_back_to_root() -> None:
    text = (ROOT / "Containerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] in (f"{UID}", f"{UID}:{UID}")
    runtime = text[text.rindex("FROM "):]
    assert not re.search(r"^USER\s+(root|0)\b", runtime, re.MULTILINE)
    assert "--create-home" in text and f"--uid {UID}" in text


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("workload", [f"{w['kind']}/{w['metadata']['name']}"
                                      for w in workloads(render("base"))])
def test_every_workload_of_the_base_is_non_root_read_only_and_unprivileged(
        workload: str) -> None:
    kind, name = workload.split("/")
    w = next(x for x in workloads(render("base"))
             if x["kind"] == kind and x["metadata"]["name"] == name)
    spec = pod_spec(w)
    pod = spec.get("securityContext") or {}
    assert pod.get("runAsNonRoot") is True
    assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert int(pod.get("runAsUser", 0)) != 0
    assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
    assert spec.get("automountServiceAccountToken") is False
    for c in _containers(spec):
        sc = c.get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
        assert not sc.get("capabilities", {}).get("add"), c["name"]
        assert sc.get("privileged") is not True, c["name"]
        if c.get("image", "").startswith("conveyor"):
            assert int(pod["runAsUser"]) == UID
            # a read-only root: whatever it writes is a volume
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}
