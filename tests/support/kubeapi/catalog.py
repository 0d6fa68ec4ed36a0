"""The resource types the fake API server knows, and the discovery documents built from them.

A ``ResourceType`` is one row of ``kubectl api-resources``. Built-in types are fixed; a
CustomResourceDefinition adds one ``ResourceType`` per served version once it is Established.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CLUSTER_VERBS = VERBS


@dataclass(frozen=True)
class ResourceType:
    group: str          # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = True
    singular: str = field(default="")

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``deployments.apps`` / ``configmaps``: how the real API names a type in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_resource(self) -> JSON:
        doc: JSON = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            doc["shortNames"] = list(self.short_names)
        if self.categories:
            doc["categories"] = list(self.categories)
        return doc


def _t(gv: str, kind: str, plural: str, namespaced: bool = True, *short: str,
       all_: bool = False, status: bool = True) -> ResourceType:
    group, _, version = gv.rpartition("/")
    return ResourceType(group, version, kind, plural, namespaced, tuple(short),
                        ("all",) if all_ else (), status)


BUILTIN: tuple[ResourceType, ...] = (
    _t("v1", "Namespace", "namespaces", False, "ns"),
    _t("v1", "ConfigMap", "configmaps", True, "cm", status=False),
    _t("v1", "Secret", "secrets", True, status=False),
    _t("v1", "Service", "services", True, "svc", all_=True),
    _t("v1", "ServiceAccount", "serviceaccounts", True, "sa", status=False),
    _t("v1", "Pod", "pods", True, "po", all_=True),
    _t("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, "pvc"),
    _t("v1", "PersistentVolume", "persistentvolumes", False, "pv"),
    _t("apps/v1", "Deployment", "deployments", True, "deploy", all_=True),
    _t("apps/v1", "StatefulSet", "statefulsets", True, "sts", all_=True),
    _t("apps/v1", "DaemonSet", "daemonsets", True, "ds", all_=True),
    _t("apps/v1", "ReplicaSet", "replicasets", True, "rs", all_=True),
    _t("batch/v1", "Job", "jobs", True, all_=True),
    _t("batch/v1", "CronJob", "cronjobs", True, "cj", all_=True),
    _t("networking.k8s.io/v1", "Ingress", "ingresses", True, "ing"),
    _t("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True, "netpol", status=False),
    _t("networking.k8s.io/v1", "IngressClass", "ingressclasses", False, status=False),
    _t("rbac.authorization.k8s.io/v1", "Role", "roles", True, status=False),
    _t("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True, status=False),
    _t("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False, status=False),
    _t("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False,
       status=False),
    _t("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True, "pdb"),
    _t("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True, "hpa",
       all_=True),
    _t("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
       False, "crd", "crds"),
)


def types_from_crd(crd: JSON) -> list[ResourceType]:
    """One ``ResourceType`` per served version of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    return [
        ResourceType(
            group=spec["group"], version=v["name"], kind=names["kind"], plural=names["plural"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status_subresource="status" in (v.get("subresources") or {}),
            singular=names.get("singular", ""),
        )
        for v in spec.get("versions") or ()
        if v.get("served", True)
    ]


def api_resource_list(group_version: str, types: Iterable[ResourceType]) -> JSON:
    resources: list[JSON] = []
    for t in types:
        resources.append(t.api_resource())
        if t.status_subresource:
            resources.append({"name": f"{t.plural}/status", "singularName": "",
                              "namespaced": t.namespaced, "kind": t.kind,
                              "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def api_group_list(types: Iterable[ResourceType]) -> JSON:
    """``/apis``: named groups in first-seen order, first-listed version preferred."""
    versions: dict[str, list[str]] = {}
    for t in types:
        if t.group and t.version not in versions.setdefault(t.group, []):
            versions[t.group].append(t.version)
    groups = []
    for name, vs in versions.items():
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in vs]
        groups.append({"name": name, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
