"""Desired vs live, with server-side apply semantics."""

from __future__ import annotations

import base64
import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.bundle import ObjectKey
from orchestrator.domain.diff import (
    REDACTED,
    REDACTED_CHANGED,
    ObjectDiff,
    diff,
    diff_object,
    normalise,
    project,
    strip_server_fields,
    summarise,
)


def deployment(image: str = "nginx:1.27", replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop",
                     "labels": {"app": "web", "conveyor.dev/environment": "prod"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "web", "image": image,
                     "ports": [{"containerPort": 8080}],
                     "resources": {"requests": {"cpu": 1, "memory": "128Mi"}}}]},
            },
        },
    }


def live_of(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns after applying ``desired``: defaults and server fields."""
    live = copy.deepcopy(desired)
    live["metadata"].update({
        "uid": "6f0c7a8e-1d2b-4c3d-9e8f-001122334455", "resourceVersion": "48213",
        "generation": 4, "creationTimestamp": "2025-01-10T10:00:00Z",
        "managedFields": [{"manager": "conveyor", "operation": "Apply"}],
        "annotations": {"deployment.kubernetes.io/revision": "3"},
    })
    live["metadata"]["labels"]["pod-template-hash"] = "7d9c6b8f5"
    spec = live["spec"]
    spec.update({"progressDeadlineSeconds": 600, "revisionHistoryLimit": 10,
                 "strategy": {"type": "RollingUpdate"}})
    pod = spec["template"]["spec"]
    pod.update({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst"})
    container = pod["containers"][0]
    container.update({"imagePullPolicy": "IfNotPresent",
                      "terminationMessagePath": "/dev/termination-log"})
    container["ports"][0]["protocol"] = "TCP"
    container["resources"]["requests"]["cpu"] = "1"
    live["status"] = {"replicas": 3, "availableReplicas": 3, "observedGeneration": 4}
    return live


def test_a_freshly_applied_object_is_in_sync() -> None:
    desired = deployment()
    assert diff_object(desired, live_of(desired)) is None
    assert diff([desired], [live_of(desired)]) == []


def test_a_changed_field_is_drift_with_a_readable_diff() -> None:
    live = live_of(deployment(image="nginx:1.27"))
    result = diff_object(deployment(image="nginx:1.28"), live)
    assert result is not None
    assert result.change == "changed"
    assert result.key == ObjectKey("apps", "Deployment", "shop", "web")
    text = result.unified_text
    assert "--- live/Deployment.apps/shop/web" in text
    assert "+++ desired/Deployment.apps/shop/web" in text
    assert "-      - image: nginx:1.27" in text
    assert "+      - image: nginx:1.28" in text
    # server-managed and defaulted fields never show
    for noise in ("resourceVersion", "managedFields", "imagePullPolicy", "status", "uid",
                  "deployment.kubernetes.io/revision", "pod-template-hash"):
        assert noise not in text


def test_a_manual_scale_is_drift() -> None:
    live = live_of(deployment(replicas=3))
    live["spec"]["replicas"] = 1  # kubectl scale --replicas=1
    result = diff_object(deployment(replicas=3), live)
    assert result is not None and "-  replicas: 1" in result.unified_text
    assert "+  replicas: 3" in result.unified_text


def test_a_removed_label_we_set_is_drift() -> None:
    live = live_of(deployment())
    del live["metadata"]["labels"]["conveyor.dev/environment"]
    assert diff_object(deployment(), live) is not None


def test_containers_match_by_name_and_injected_sidecars_are_not_drift() -> None:
    live = live_of(deployment())
    live["spec"]["template"]["spec"]["containers"].insert(
        0, {"name": "istio-proxy", "image": "istio/proxyv2:1.24"})
    assert diff_object(deployment(), live) is None


def test_a_missing_container_is_drift() -> None:
    desired = deployment()
    desired["spec"]["template"]["spec"]["containers"].append({"name": "log", "image": "busybox"})
    live = live_of(deployment())
    result = diff_object(desired, live)
    assert result is not None and "name: log" in result.unified_text


def test_positional_lists_compare_whole() -> None:
    desired: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                               "spec": {"containers": [{"name": "c", "args": ["--a", "--b"]}]}}
    live = copy.deepcopy(desired)
    live["spec"]["containers"][0]["args"] = ["--a", "--b", "--c"]
    assert diff_object(desired, live) is not None
    live["spec"]["containers"][0]["args"] = ["--b", "--a"]
    assert diff_object(desired, live) is not None


def test_empty_and_null_desired_fields_match_absent_live_fields() -> None:
    desired = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "namespace": "shop", "annotations": {},
                            "labels": None},
               "data": {"a": "1"}}
    live = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "shop", "uid": "x"}, "data": {"a": "1"}}
    assert diff_object(desired, live) is None


def test_numbers_and_their_string_spelling_are_equal_but_values_are_not() -> None:
    assert project("1", 1) == 1
    assert project(8080, "8080") == "8080"
    assert project("2", 1) == "2"
    assert project("true", True) == "true"


def test_added_and_removed() -> None:
    new = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new", "namespace": "s"},
           "data": {"k": "v"}}
    old = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old", "namespace": "s",
                                                                "uid": "u"}}
    diffs = diff([new], [old])
    assert [(str(d.key), d.change) for d in diffs] == [("ConfigMap/s/new", "added"),
                                                       ("ConfigMap/s/old", "removed")]
    assert "+data:" in diffs[0].unified_text and "--- live/ConfigMap/s/new" in diffs[0].unified_text
    assert "-  name: old" in diffs[1].unified_text
    assert "uid" not in diffs[1].unified_text


def test_secret_values_are_compared_but_never_shown() -> None:
    def secret(**data: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "db", "namespace": "shop"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    live = secret(user="admin", password="hunter2")
    assert diff_object(secret(user="admin", password="hunter2"), live) is None
    result = diff_object(secret(user="admin", password="correct horse"), live)
    assert result is not None
    text = result.unified_text
    assert "hunter2" not in text and "correct horse" not in text
    for plain in ("admin", "hunter2", "correct horse"):
        assert base64.b64encode(plain.encode()).decode() not in text
    assert f"+  password: {REDACTED_CHANGED}" in text
    assert f"-  password: {REDACTED}" in text
    assert f" user: {REDACTED}" in text  # unchanged keys are context lines
    added = diff_object(secret(password="s3cret"), None)
    assert added is not None and "s3cret" not in added.unified_text
    assert base64.b64encode(b"s3cret").decode() not in added.unified_text


def test_secret_string_data_matches_its_base64_data() -> None:
    desired: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                               "stringData": {"password": "hunter2"}}
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "uid": "u"},
            "type": "Opaque", "data": {"password": base64.b64encode(b"hunter2").decode()}}
    assert diff_object(desired, live) is None
    desired["stringData"]["password"] = "changed"
    assert diff_object(desired, live) is not None


def test_strip_server_fields_does_not_touch_its_input() -> None:
    live = live_of(deployment())
    before = copy.deepcopy(live)
    stripped = strip_server_fields(live)
    assert live == before
    assert "status" not in stripped and "uid" not in stripped["metadata"]
    assert "annotations" not in stripped["metadata"]


def test_normalise_keeps_what_desired_sets() -> None:
    wanted, projected = normalise(deployment(), live_of(deployment()))
    assert wanted == projected
    assert projected["spec"]["template"]["spec"]["containers"][0].keys() == {
        "name", "image", "ports", "resources"}


def test_summarise() -> None:
    assert summarise([]) == "No differences."
    diffs = [ObjectDiff(ObjectKey("", "Secret", "s", "old"), "removed", ""),
             ObjectDiff(ObjectKey("apps", "Deployment", "s", "web"), "changed", ""),
             ObjectDiff(ObjectKey("", "ConfigMap", "s", "new"), "added", "")]
    assert summarise(diffs) == (
        "3 objects differ: 1 added, 1 changed, 1 removed\n"
        "  + ConfigMap/s/new\n"
        "  - Secret/s/old\n"
        "  ~ Deployment.apps/s/web")
    assert summarise(diffs[1:2]) == "1 object differs: 1 changed\n  ~ Deployment.apps/s/web"


# -- properties -------------------------------------------------------------------------------

scalars = st.one_of(st.integers(-5, 5), st.text("ab", max_size=3), st.booleans())
trees = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text("xyz", min_size=1, max_size=2),
                                                    children, max_size=3)), max_leaves=12)
specs = st.dictionaries(st.text("pqr", min_size=1, max_size=2), trees, max_size=4)


def configmap(data: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Thing",
            "metadata": {"name": "t", "namespace": "n"}, "spec": data}


@given(specs)
def test_an_object_is_in_sync_with_itself(spec: dict[str, Any]) -> None:
    assert diff_object(configmap(spec), configmap(spec)) is None


@given(specs, specs)
def test_extra_live_fields_are_never_drift(spec: dict[str, Any], extra: dict[str, Any]) -> None:
    live = configmap(spec)
    live["spec"] = {**extra, **spec}
    live["status"] = extra
    assert diff_object(configmap(spec), live) is None


@given(specs, specs)
def test_diff_is_none_exactly_when_normalised_sides_are_equal(a: dict[str, Any],
                                                               b: dict[str, Any]) -> None:
    wanted, projected = normalise(configmap(a), configmap(b))
    result = diff_object(configmap(a), configmap(b))
    assert (result is None) == (wanted == projected)
    if result is not None:
        assert result.change == "changed" and result.unified_text.startswith("--- live/")
