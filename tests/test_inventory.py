"""Inventory: what was applied, its JSON form, and what may be pruned."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.inventory import (
    ENVIRONMENT_LABEL,
    INVENTORY_DATA_KEY,
    PRUNE_ANNOTATION,
    Entry,
    Inventory,
    from_configmap,
    inventory_name,
    label_for,
    prunable,
    removed,
    to_configmap,
    to_prune,
)


def obj(kind: str, name: str, namespace: str = "shop", api_version: str = "v1",
        env: str | None = "prod", prune: str | None = None,
        wave: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if env is not None:
        metadata["labels"] = {ENVIRONMENT_LABEL: env, "app": "shop"}
    annotations = {}
    if prune is not None:
        annotations[PRUNE_ANNOTATION] = prune
    if wave is not None:
        annotations["conveyor.dev/sync-wave"] = wave
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def live_of(*objects: dict[str, Any]) -> dict[ObjectKey, dict[str, Any]]:
    return {object_key(o): o for o in objects}


CM = obj("ConfigMap", "settings")
SECRET = obj("Secret", "credentials")
DEPLOY = obj("Deployment", "web", api_version="apps/v1")
NS = obj("Namespace", "shop", namespace="")
WIDGET = obj("Widget", "gizmo", api_version="example.com/v1")


def test_label_for_gives_the_environment_label() -> None:
    assert label_for("prod") == {"conveyor.dev/environment": "prod"}


@pytest.mark.parametrize("bad", ["", "-prod", "prod_", "a" * 64, "prod eu", "prod/eu"])
def test_label_for_refuses_what_cannot_be_a_label_value(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be a label value"):
        label_for(bad)


def test_inventory_is_sorted_and_keyed_by_identity() -> None:
    inventory = Inventory.of("prod", [DEPLOY, CM, NS])
    # ObjectKey order (group first), as the bundle sorts its objects
    assert [str(e) for e in inventory] == ["ConfigMap/shop/settings", "Namespace/shop",
                                           "Deployment.apps/shop/web"]
    assert object_key(DEPLOY) in inventory and object_key(SECRET) not in inventory
    assert len(inventory) == 3
    assert Entry.of(DEPLOY) == Entry(ObjectKey("apps", "Deployment", "shop", "web"), "apps/v1")


def test_inventory_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match=r"more than once: ConfigMap/shop/settings"):
        Inventory.of("prod", [CM, {**CM, "data": {"a": "b"}}])


def test_json_round_trip_and_shape() -> None:
    inventory = Inventory.of("prod", [DEPLOY, NS])
    data = json.loads(inventory.to_json())
    assert data == {"format": "conveyor.inventory/v1", "environment": "prod", "entries": [
        {"apiVersion": "v1", "kind": "Namespace", "namespace": "", "name": "shop"},
        {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web"}]}
    assert Inventory.from_json(inventory.to_json()) == inventory
    assert Inventory.from_dict(inventory.to_dict()) == inventory


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "not a conveyor inventory"),
    ('{"format": "conveyor.inventory/v1", "environment": "prod", "entries": {}}',
     "entries must be a list"),
    ('{"format": "conveyor.inventory/v1", "environment": "prod", "entries": [{"kind": "x"}]}',
     "apiVersion must be a non-empty string"),
    ('{"format": "conveyor.inventory/v1", "environment": 3, "entries": []}',
     "environment must be a string"),
])
def test_from_json_explains_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Inventory.from_json(text)


def test_configmap_round_trip() -> None:
    inventory = Inventory.of("prod", [DEPLOY, CM])
    configmap = to_configmap(inventory, "conveyor-system")
    assert configmap["metadata"]["name"] == "conveyor-inventory-prod"
    assert configmap["metadata"]["labels"] == {ENVIRONMENT_LABEL: "prod"}
    assert configmap["metadata"]["annotations"] == {PRUNE_ANNOTATION: "disabled"}
    assert from_configmap(configmap) == inventory
    with pytest.raises(ValueError, match=INVENTORY_DATA_KEY):
        from_configmap({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}})


def test_inventory_names_are_valid_and_distinct() -> None:
    assert inventory_name("prod") == "conveyor-inventory-prod"
    odd = {inventory_name(n) for n in ("Prod_EU", "prod-eu", "prod_eu", "PROD-EU")}
    assert len(odd) == 4
    assert all(n.replace("-", "").isalnum() and n == n.lower() for n in odd)


# -- pruning ----------------------------------------------------------------------------------

def test_prunes_what_left_the_desired_state() -> None:
    old = Inventory.of("prod", [CM, SECRET, DEPLOY])
    new = Inventory.of("prod", [DEPLOY])
    assert [str(e) for e in to_prune(old, new, live_of(CM, SECRET, DEPLOY))] == [
        "ConfigMap/shop/settings", "Secret/shop/credentials"]


def test_never_prunes_objects_without_our_environment_label() -> None:
    adopted = obj("ConfigMap", "settings", env="staging")
    unlabelled = obj("Secret", "credentials", env=None)
    old = Inventory.of("prod", [adopted, unlabelled])
    assert to_prune(old, Inventory("prod"), live_of(adopted, unlabelled)) == []


def test_never_prunes_objects_with_prune_disabled() -> None:
    kept = obj("ConfigMap", "settings", prune="disabled")
    other_value = obj("Secret", "credentials", prune="enabled")
    old = Inventory.of("prod", [kept, other_value])
    assert [str(e) for e in to_prune(old, Inventory("prod"), live_of(kept, other_value))] == [
        "Secret/shop/credentials"]


def test_objects_already_gone_need_nothing() -> None:
    old = Inventory.of("prod", [CM, SECRET])
    assert [str(e) for e in to_prune(old, Inventory("prod"), live_of(SECRET))] == [
        "Secret/shop/credentials"]


def test_prune_order_is_deletion_order_with_live_waves() -> None:
    late = obj("ConfigMap", "late", wave="5")
    bad_wave = obj("ConfigMap", "odd", wave="soon")  # does not block pruning; wave 0
    objects = [NS, CM, DEPLOY, WIDGET, late, bad_wave,
               obj("CustomResourceDefinition", "widgets.example.com", namespace="",
                   api_version="apiextensions.k8s.io/v1")]
    old = Inventory.of("prod", objects)
    assert [str(e) for e in to_prune(old, Inventory("prod"), live_of(*objects))] == [
        "ConfigMap/shop/late", "Widget.example.com/shop/gizmo", "Deployment.apps/shop/web",
        "ConfigMap/shop/settings", "ConfigMap/shop/odd",
        "CustomResourceDefinition.apiextensions.k8s.io/widgets.example.com", "Namespace/shop"]


def test_a_new_api_version_is_the_same_object() -> None:
    old = Inventory.of("prod", [obj("HorizontalPodAutoscaler", "web",
                                    api_version="autoscaling/v1")])
    new = Inventory.of("prod", [obj("HorizontalPodAutoscaler", "web",
                                    api_version="autoscaling/v2")])
    assert removed(old, new) == []


def test_new_may_be_plain_keys_and_must_be_the_same_environment() -> None:
    old = Inventory.of("prod", [CM, SECRET])
    assert [str(e) for e in to_prune(old, [object_key(CM)], live_of(CM, SECRET))] == [
        "Secret/shop/credentials"]
    with pytest.raises(ValueError, match="inventory of 'staging'"):
        to_prune(old, Inventory("staging"), live_of(CM))


def test_prunable_reads_labels_and_annotations() -> None:
    assert prunable(CM, "prod")
    assert not prunable(CM, "staging")
    assert not prunable(obj("ConfigMap", "x", prune="disabled"), "prod")
    assert not prunable({"metadata": None}, "prod")


# -- properties -------------------------------------------------------------------------------

entries = st.builds(
    lambda kind, name, ns, env, prune: obj(kind, name, ns, env=env, prune=prune),
    st.sampled_from(["ConfigMap", "Secret", "Service", "Namespace"]),
    st.text("abc", min_size=1, max_size=3), st.sampled_from(["", "x", "y"]),
    st.sampled_from(["prod", "prod", "staging", None]),
    st.sampled_from([None, None, "disabled"]))
object_sets = st.lists(entries, max_size=20).map(
    lambda items: list({object_key(o): o for o in items}.values()))


@given(object_sets, object_sets, st.data())
def test_to_prune_is_safe(old_objs: list[dict[str, Any]], new_objs: list[dict[str, Any]],
                          data: st.DataObject) -> None:
    old = Inventory.of("prod", old_objs)
    new = Inventory.of("prod", new_objs)
    gone = data.draw(st.sets(st.sampled_from([object_key(o) for o in old_objs]))
                     if old_objs else st.just(set()))
    live = {k: v for k, v in live_of(*old_objs).items() if k not in gone}
    result = to_prune(old, new, live)
    keys = [e.key for e in result]
    assert len(set(keys)) == len(keys)
    for entry in result:
        assert entry.key in old and entry.key not in new and entry.key in live
        assert prunable(live[entry.key], "prod")
    # and nothing prunable was forgotten
    expected = {k for k in old.keys() - new.keys() if k in live and prunable(live[k], "prod")}
    assert set(keys) == expected


@given(object_sets)
def test_json_round_trip_property(objects: list[dict[str, Any]]) -> None:
    inventory = Inventory.of("prod", objects)
    assert Inventory.from_json(inventory.to_json()) == inventory
    assert Inventory.of("prod", list(reversed(objects))).to_json() == inventory.to_json()


@given(st.text(min_size=1, max_size=70))
def test_label_for_accepts_exactly_valid_label_values(value: str) -> None:
    import re
    valid = re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value) is not None \
        and len(value) <= 63
    if valid:
        assert label_for(value) == {ENVIRONMENT_LABEL: value}
    else:
        with pytest.raises(ValueError):
            label_for(value)
