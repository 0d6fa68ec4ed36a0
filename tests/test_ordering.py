"""Apply order: phase, then sync wave, then kind (Helm's order), then name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.ordering import (
    ARGOCD_SYNC_WAVE_ANNOTATION,
    KIND_ORDER,
    SYNC_WAVE_ANNOTATION,
    InvalidSyncWave,
    Phase,
    apply_key,
    apply_order,
    deletion_order,
    key_order,
    parse_wave,
    plan_waves,
    sync_wave,
)
from orchestrator.errors import ManifestError, PermanentError

API_VERSIONS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1",
                "CustomResourceDefinition": "apiextensions.k8s.io/v1", "Widget": "example.com/v1",
                "Ingress": "networking.k8s.io/v1", "ClusterRole": "rbac.authorization.k8s.io/v1"}


def obj(kind: str, name: str, namespace: str = "shop", wave: object = None,
        argo_wave: object = None) -> dict[str, Any]:
    annotations = {}
    if wave is not None:
        annotations[SYNC_WAVE_ANNOTATION] = wave
    if argo_wave is not None:
        annotations[ARGOCD_SYNC_WAVE_ANNOTATION] = argo_wave
    metadata: dict[str, Any] = {"name": name}
    if namespace and kind not in ("Namespace", "CustomResourceDefinition", "ClusterRole"):
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSIONS.get(kind, "v1"), "kind": kind, "metadata": metadata}


def names(objects: list[Any]) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


def test_kinds_follow_helms_install_order_then_unknown_kinds_by_name() -> None:
    objects = [obj("Ingress", "web"), obj("Zebra", "z"), obj("Deployment", "web"),
               obj("Service", "web"), obj("ConfigMap", "cfg"), obj("Widget", "w"),
               obj("ServiceAccount", "sa"), obj("Secret", "s"), obj("ClusterRole", "reader")]
    assert names(apply_order(objects)) == [
        "ServiceAccount/sa", "Secret/s", "ConfigMap/cfg", "ClusterRole/reader", "Service/web",
        "Deployment/web", "Ingress/web", "Widget/w", "Zebra/z"]


def test_namespaces_and_crds_come_first_whatever_their_wave() -> None:
    objects = [obj("Widget", "w", wave="-10"), obj("ConfigMap", "c", wave=-5),
               obj("CustomResourceDefinition", "widgets.example.com", wave="7"),
               obj("Namespace", "shop", wave=3)]
    assert names(apply_order(objects)) == [
        "Namespace/shop", "CustomResourceDefinition/widgets.example.com", "Widget/w",
        "ConfigMap/c"]


def test_waves_order_before_kinds_and_may_be_negative() -> None:
    objects = [obj("ConfigMap", "late", wave="2"), obj("Deployment", "web"),
               obj("Job", "migrate", wave="-1"), obj("Secret", "also-default", wave="0")]
    assert names(apply_order(objects)) == [
        "Job/migrate", "Secret/also-default", "Deployment/web", "ConfigMap/late"]


def test_argo_cd_annotation_is_honoured_and_ours_wins() -> None:
    assert sync_wave(obj("ConfigMap", "a", argo_wave="5")) == 5
    assert sync_wave(obj("ConfigMap", "a", wave="-2", argo_wave="5")) == -2
    assert sync_wave(obj("ConfigMap", "a")) == 0


def test_ties_are_broken_by_namespace_then_name() -> None:
    objects = [obj("ConfigMap", "b", "x"), obj("ConfigMap", "a", "y"), obj("ConfigMap", "c", "x")]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in apply_order(objects)] \
        == [("x", "b"), ("x", "c"), ("y", "a")]


def test_plan_waves_groups_and_orders() -> None:
    objects = [obj("Deployment", "web", wave=1), obj("Namespace", "shop"),
               obj("ConfigMap", "cfg", wave=1), obj("Job", "migrate", wave=-1),
               obj("CustomResourceDefinition", "widgets.example.com"), obj("Service", "web")]
    waves = plan_waves(objects)
    assert [(w.phase, w.number) for w in waves] == [
        (Phase.BOOTSTRAP, 0), (Phase.SYNC, -1), (Phase.SYNC, 0), (Phase.SYNC, 1)]
    assert [names(list(w.objects)) for w in waves] == [
        ["Namespace/shop", "CustomResourceDefinition/widgets.example.com"],
        ["Job/migrate"], ["Service/web"], ["ConfigMap/cfg", "Deployment/web"]]
    assert str(waves[0]) == "namespaces and CRDs: 2 object(s)"
    assert str(waves[3]) == "wave 1: 2 object(s)"
    assert waves[1].keys == [ObjectKey("batch", "Job", "shop", "migrate")]


def test_plan_waves_without_namespaces_or_crds_has_no_bootstrap_wave() -> None:
    waves = plan_waves([obj("ConfigMap", "a"), obj("Secret", "b")])
    assert [(w.phase, w.number) for w in waves] == [(Phase.SYNC, 0)]
    assert plan_waves([]) == []


def test_deletion_is_the_reverse_of_apply() -> None:
    objects = [obj("Namespace", "shop"), obj("Deployment", "web"), obj("Widget", "w"),
               obj("CustomResourceDefinition", "widgets.example.com"), obj("ConfigMap", "c")]
    assert names(deletion_order(objects)) == [
        "Widget/w", "Deployment/web", "ConfigMap/c",
        "CustomResourceDefinition/widgets.example.com", "Namespace/shop"]


def test_an_invalid_wave_is_refused_naming_every_object() -> None:
    objects = [obj("ConfigMap", "a", wave="one"), obj("Secret", "b", argo_wave="1.5"),
               obj("Service", "ok", wave="3")]
    with pytest.raises(InvalidSyncWave) as caught:
        plan_waves(objects)
    error = caught.value
    assert isinstance(error, ManifestError) and isinstance(error, PermanentError)
    assert error.reason == "InvalidSyncWave"
    assert error.errors == [
        "ConfigMap/shop/a: annotation conveyor.dev/sync-wave must be an integer, got 'one'",
        "Secret/shop/b: annotation argocd.argoproj.io/sync-wave must be an integer, got '1.5'",
    ]
    with pytest.raises(InvalidSyncWave):
        deletion_order(objects)


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("-3", -3), ("+4", 4), (" 12 ", 12), (7, 7), ("-0", 0)])
def test_parse_wave_accepts_integers(value: object, expected: int) -> None:
    assert parse_wave(value) == expected


@pytest.mark.parametrize("value", ["", "1.5", "one", "1e3", True, None, 2.0, "--1", "0x10"])
def test_parse_wave_refuses_the_rest(value: object) -> None:
    with pytest.raises(ValueError, match="sync wave must be an integer"):
        parse_wave(value)


def test_key_order_matches_apply_key_for_inventory_entries() -> None:
    deployment = obj("Deployment", "web", wave="2")
    assert key_order(object_key(deployment), 2) == apply_key(deployment)
    crd = obj("CustomResourceDefinition", "widgets.example.com", wave="9")
    assert key_order(object_key(crd), 9).wave == 0


def test_kind_order_has_no_duplicates() -> None:
    assert len(set(KIND_ORDER)) == len(KIND_ORDER)


# -- properties -------------------------------------------------------------------------------

KINDS = ["Namespace", "CustomResourceDefinition", "ConfigMap", "Secret", "Service", "Deployment",
         "Job", "Widget", "Ingress", "Zebra"]

objects_strategy = st.lists(
    st.builds(obj, st.sampled_from(KINDS), st.sampled_from(["a", "b", "c"]),
              st.sampled_from(["x", "y"]), st.one_of(st.none(), st.integers(-3, 3).map(str))),
    max_size=25,
).map(lambda items: list({object_key(o): o for o in items}.values()))


@given(objects_strategy, st.randoms())
def test_order_does_not_depend_on_input_order(objects: list[dict[str, Any]], rnd: Any) -> None:
    shuffled = list(objects)
    rnd.shuffle(shuffled)
    assert apply_order(shuffled) == apply_order(objects)


@given(objects_strategy)
def test_waves_partition_the_apply_order(objects: list[dict[str, Any]]) -> None:
    waves = plan_waves(objects)
    flattened = [o for w in waves for o in w.objects]
    assert flattened == apply_order(objects)
    assert sorted(map(object_key, flattened)) == sorted(map(object_key, objects))
    stages = [(w.phase, w.number) for w in waves]
    assert stages == sorted(stages) and len(set(stages)) == len(stages)
    for wave in waves:
        assert all((wave.phase is Phase.BOOTSTRAP) == (o["kind"] in ("Namespace",
                   "CustomResourceDefinition")) for o in wave.objects)


@given(objects_strategy)
def test_deletion_order_is_reversed_apply_order(objects: list[dict[str, Any]]) -> None:
    assert deletion_order(objects) == list(reversed(apply_order(objects)))
