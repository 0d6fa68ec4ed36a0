"""The Kubernetes manifests under k8s/: every overlay renders, validates and is safe to apply.

Each overlay is rendered with ``kubectl kustomize`` and every object is checked against the
Kubernetes OpenAPI schemas shipped by ``kubernetes-validate`` (strict: unknown fields fail).
Then the properties that matter for running Conveyor: probes, resources and a restricted
security context on every workload, one applier per environment with ``--env``, RBAC only
where an applier targets this cluster, network policies that deny by default and let exactly
the intended flows through, a three-server NATS JetStream cluster on persistent volumes, and
no credentials anywhere in the repository.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv_utils  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
ENVIRONMENTS = {"dev", "prod"}  # the example environments of both overlays
NAMESPACE = "conveyor"
UID = 10001

Obj = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------------

def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    pytest.skip("kubectl (with built-in kustomize) is not installed")


@functools.cache
def render(path: str) -> tuple[Obj, ...]:
    proc = subprocess.run([_kubectl(), "kustomize", str(K8S / path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def overlay(name: str) -> tuple[Obj, ...]:
    return render(f"overlays/{name}")


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    matches = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def component(workload: Obj) -> str:
    return pod_labels(workload).get("app.kubernetes.io/component", "")


def is_conveyor(workload: Obj) -> bool:
    return pod_labels(workload).get("app.kubernetes.io/name") == "conveyor"


def appliers(objs: tuple[Obj, ...]) -> list[Obj]:
    return [w for w in of_kind(objs, "Deployment") if component(w) == "applier"]


def env_of(applier: Obj) -> str:
    return applier["metadata"]["labels"]["conveyor.dev/environment"]


def schema_versions() -> list[str]:
    """The newest schemas shipped, and the oldest Kubernetes we claim to support (1.29)."""
    latest = kv_utils.major_minor(kv_utils.latest_version())
    available = {kv_utils.major_minor(v) for v in kv_utils.all_versions()}
    return sorted({latest} | ({"1.29"} & available))


# -- schema validation -------------------------------------------------------------------------

@pytest.mark.parametrize("version", schema_versions())
@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in OVERLAYS), "base", "secrets-example",
                                  *(f"target-cluster/{e}" for e in sorted(ENVIRONMENTS))])
def test_every_object_validates_against_the_kubernetes_schema(path: str, version: str) -> None:
    objs = render(path)
    assert objs
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                          f"at {'.'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)


def test_both_deployment_shapes_exist() -> None:
    assert {"single-cluster", "cluster-per-environment"} <= set(OVERLAYS)


@pytest.mark.parametrize("name", OVERLAYS)
def test_everything_but_target_rbac_lives_in_the_conveyor_namespace(name: str) -> None:
    for obj in overlay(name):
        if obj["kind"] in ("Namespace", "Role", "RoleBinding"):
            continue
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
    ns = named(overlay(name), "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- workloads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OVERLAYS)
def test_every_workload_has_probes_resources_and_a_restricted_security_context(name: str) -> None:
    objs = overlay(name)
    assert {component(w) for w in workloads(objs)} == {
        "event-store", "git-watcher", "renderer", "notifier", "api", "applier"}
    for w in workloads(objs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc.get("runAsUser", 0) != 0, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            paths = ({"readinessProbe": "/readyz", "livenessProbe": "/livez"} if is_conveyor(w)
                     else dict.fromkeys(("readinessProbe", "livenessProbe"), "/healthz"))
            for probe, path in paths.items():
                get = c[probe]["httpGet"]
                assert get["path"].split("?")[0] == path, f"{where} {probe}"
                port = ports.get(get["port"], get["port"])
                assert port == (8080 if is_conveyor(w) else 8222), f"{where} {probe}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            assert not csc["capabilities"].get("add"), where
            # read-only root: whatever must be written is a volume
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if is_conveyor(w):
                assert psc["runAsUser"] == UID and "/tmp" in mounts, where
            else:
                assert {"/data", "/var/run/nats"} <= mounts, where


@pytest.mark.parametrize("name", OVERLAYS)
def test_conveyor_containers_use_the_published_image_and_the_cli_contract(name: str) -> None:
    from conveyor.app import SERVICES
    from conveyor.cli import build_parser

    parser = build_parser()
    nats_service = named(overlay(name), "Service", "nats")
    for w in workloads(overlay(name)):
        if not is_conveyor(w):
            continue
        (c,) = pod_spec(w)["containers"]
        assert c["image"] != "conveyor" and ":" in c["image"], "overlay must set the image"
        assert "command" not in c, "the image's ENTRYPOINT is `conveyor`"
        args = parser.parse_args(c["args"])
        assert args.command == "run" and args.service in SERVICES
        assert args.service == component(w)
        assert args.listen == "0.0.0.0:8080"
        host, _, port = args.nats.removeprefix("nats://").partition(":")
        assert host == nats_service["metadata"]["name"] and port == "4222"
        if args.service in ("git-watcher", "renderer", "applier", "api"):  # api: GitOps
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert args.data_dir in mounts, f"{args.service}: --data-dir must be a volume"
            volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
            data = next(m for m in c["volumeMounts"] if m["mountPath"] == args.data_dir)
            assert "emptyDir" in volumes[data["name"]] and not data.get("readOnly")


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_other_than_appliers_have_no_kubernetes_api_access(name: str) -> None:
    objs = overlay(name)
    bound = {s["name"] for b in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding")
             for s in b.get("subjects", [])}
    for w in workloads(objs):
        if component(w) == "applier":
            continue
        spec = pod_spec(w)
        assert spec["automountServiceAccountToken"] is False, w["metadata"]["name"]
        sa_name = spec.get("serviceAccountName")
        if sa_name:
            assert named(objs, "ServiceAccount", sa_name)["automountServiceAccountToken"] is False
            assert sa_name not in bound


@pytest.mark.parametrize("name", OVERLAYS)
def test_one_applier_per_environment_with_env_and_its_own_credentials(name: str) -> None:
    objs = overlay(name)
    found = appliers(objs)
    assert {env_of(a) for a in found} == ENVIRONMENTS
    assert len(found) == len(ENVIRONMENTS)
    for a in found:
        env = env_of(a)
        assert a["metadata"]["name"] == f"conveyor-applier-{env}"
        assert a["spec"]["replicas"] == 1 and a["spec"]["strategy"]["type"] == "Recreate"
        assert a["spec"]["selector"]["matchLabels"]["conveyor.dev/environment"] == env
        (c,) = pod_spec(a)["containers"]
        args = c["args"]
        assert args.count("--env") == 1 and args[args.index("--env") + 1] == env
        assert "ENVIRONMENT" not in yaml.safe_dump(a), "a placeholder was left unreplaced"
        secrets = [e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e]
        assert secrets == [f"conveyor-applier-{env}"]
        sa = named(objs, "ServiceAccount", pod_spec(a)["serviceAccountName"])
        assert sa["metadata"]["name"] == f"conveyor-applier-{env}"


# Enough for server-side apply (get, create, patch), health (list, watch) and prune (delete).
APPLY_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
CLUSTER_SCOPED = {"namespaces", "nodes", "customresourcedefinitions", "clusterroles",
                  "clusterrolebindings", "persistentvolumes", "storageclasses"}


def assert_bound_to_its_namespace_only(objs: tuple[Obj, ...], env: str) -> None:
    """SA conveyor-applier-<env> may apply and prune in namespace <env>, nothing more."""
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")
    sa = f"conveyor-applier-{env}"
    named(objs, "ServiceAccount", sa)
    named(objs, "Namespace", env)
    bindings = [b for b in of_kind(objs, "RoleBinding")
                if any(s["name"] == sa for s in b["subjects"])]
    assert len(bindings) == 1
    (binding,) = bindings
    assert binding["metadata"]["namespace"] == env
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    role = named(objs, "Role", binding["roleRef"]["name"])
    assert role["metadata"]["namespace"] == env
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
        assert set(rule["verbs"]) <= APPLY_VERBS, rule
        assert not set(rule["resources"]) & CLUSTER_SCOPED, rule
    writable = {r for rule in role["rules"] if "patch" in rule["verbs"] for r in rule["resources"]}
    assert {"deployments", "services", "configmaps"} <= writable


def test_single_cluster_appliers_are_bound_to_their_own_namespace_only() -> None:
    objs = overlay("single-cluster")
    for a in appliers(objs):
        env = env_of(a)
        assert pod_spec(a)["serviceAccountName"] == f"conveyor-applier-{env}"
        assert pod_spec(a)["automountServiceAccountToken"] is True
        assert named(objs, "ServiceAccount", f"conveyor-applier-{env}")[
            "automountServiceAccountToken"] is True
        assert_bound_to_its_namespace_only(objs, env)


@pytest.mark.parametrize("env", sorted(ENVIRONMENTS))
def test_target_cluster_rbac_gives_the_kubeconfig_identity_the_same_role(env: str) -> None:
    objs = render(f"target-cluster/{env}")
    assert not workloads(objs)
    assert_bound_to_its_namespace_only(objs, env)
    (token,) = of_kind(objs, "Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == \
        f"conveyor-applier-{env}"
    assert not token.get("data") and not token.get("stringData")


def test_cluster_per_environment_appliers_use_a_kubeconfig_and_no_local_rbac() -> None:
    objs = overlay("cluster-per-environment")
    for kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        assert not of_kind(objs, kind)
    for a in appliers(objs):
        env = env_of(a)
        spec = pod_spec(a)
        assert spec["automountServiceAccountToken"] is False
        (c,) = spec["containers"]
        kubeconfig = {e["name"]: e.get("value") for e in c["env"]}["KUBECONFIG"]
        mount = next(m for m in c["volumeMounts"] if kubeconfig.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"conveyor-applier-{env}-kubeconfig"
        assert not volume["secret"].get("optional")
        assert kubeconfig.rsplit("/", 1)[1] == "kubeconfig"  # the Secret's key


# -- network policies --------------------------------------------------------------------------

def _selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


OUTSIDE = None  # a peer outside the namespace (the internet, another namespace)


def _peer_matches(peer: Obj, other: dict[str, str] | None) -> bool:
    if "ipBlock" in peer:
        return other is OUTSIDE  # policies here use ipBlocks only for the outside world
    if "namespaceSelector" in peer:
        return other is OUTSIDE and peer["namespaceSelector"] == {}
    return other is not OUTSIDE and _selects(peer.get("podSelector"), other)


def allowed(objs: tuple[Obj, ...], direction: str, pod: dict[str, str],
            other: dict[str, str] | None, port: int) -> bool:
    """Whether the NetworkPolicies let ``pod`` talk (egress) to / hear (ingress) from ``other``."""
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    policies = [p for p in of_kind(objs, "NetworkPolicy") if direction in p["spec"]["policyTypes"]
                and _selects(p["spec"]["podSelector"], pod)]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get(key) or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            if not rule.get(peers) or any(_peer_matches(p, other) for p in rule[peers]):
                return True
    return False


def can_connect(objs: tuple[Obj, ...], src: dict[str, str] | None, dst: dict[str, str] | None,
                port: int) -> bool:
    out_ok = src is OUTSIDE or allowed(objs, "Egress", src, dst, port)
    in_ok = dst is OUTSIDE or allowed(objs, "Ingress", dst, src, port)
    return out_ok and in_ok


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policies_deny_by_default(name: str) -> None:
    objs = overlay(name)
    deny = [p for p in of_kind(objs, "NetworkPolicy")
            if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for w in workloads(objs):  # nothing reaches a pod on a port nobody asked for
        assert not can_connect(objs, OUTSIDE, pod_labels(w), 9999)
        assert not can_connect(objs, pod_labels(w), OUTSIDE, 25)


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policies_allow_exactly_the_intended_flows(name: str) -> None:
    objs = overlay(name)
    by = {component(w): pod_labels(w) for w in workloads(objs)}
    nats = by["event-store"]
    for comp, labels in by.items():
        if comp == "event-store":
            continue
        assert can_connect(objs, labels, nats, 4222), f"{comp} -> nats:4222"
        assert not can_connect(objs, labels, nats, 6222), f"{comp} -> nats:6222"
        expected_https = comp in ("git-watcher", "renderer", "notifier", "applier", "api")
        assert can_connect(objs, labels, OUTSIDE, 443) == expected_https, comp
        assert can_connect(objs, labels, OUTSIDE, 8080) is False, comp
        assert can_connect(objs, OUTSIDE, labels, 8080) == (comp == "api"), comp
    assert can_connect(objs, nats, nats, 6222)
    assert not can_connect(objs, OUTSIDE, nats, 4222)
    assert not can_connect(objs, nats, OUTSIDE, 443)
    assert can_connect(objs, by["git-watcher"], OUTSIDE, 22)
    assert can_connect(objs, by["api"], OUTSIDE, 22)  # pushes over SSH
    assert not can_connect(objs, by["notifier"], OUTSIDE, 22)
    assert can_connect(objs, by["applier"], OUTSIDE, 6443)  # API servers
    dns = [p for p in of_kind(objs, "NetworkPolicy") if p["spec"]["podSelector"] == {}
           and any({"port": 53, "protocol": "UDP"} in r.get("ports", [])
                   for r in p["spec"].get("egress", []))]
    assert dns, "every pod needs DNS"


def test_the_documented_patch_narrows_the_apis_egress_to_the_operators_hosts(
        tmp_path: Path) -> None:
    """docs/install-kubernetes.md's overlay patch for ``api-egress``, applied to the base as
    written there: the api then reaches only that CIDR on those ports."""
    doc = (ROOT / "docs" / "install-kubernetes.md").read_text()
    block = doc.split("# in your overlay's kustomization.yaml\n", 1)[1].split("```", 1)[0]
    patches = yaml.safe_load(block)["patches"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", tmp_path)], "patches": patches}))
    proc = subprocess.run([_kubectl(), "kustomize", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    policy = named(objs, "NetworkPolicy", "api-egress")
    (rule,) = policy["spec"]["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert sorted(p["port"] for p in rule["ports"]) == [443, 3000]
    api = next(pod_labels(w) for w in workloads(objs) if component(w) == "api")
    assert can_connect(objs, api, OUTSIDE, 3000) and not can_connect(objs, api, OUTSIDE, 22)
    # the base itself is untouched: 443 and 22 anywhere
    (base_rule,) = named(render("base"), "NetworkPolicy", "api-egress")["spec"]["egress"]
    assert {"ipBlock": {"cidr": "0.0.0.0/0"}} in base_rule["to"]


# -- NATS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OVERLAYS)
def test_nats_is_a_three_server_jetstream_cluster_on_persistent_volumes(name: str) -> None:
    objs = overlay(name)
    (sts,) = of_kind(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (c,) = pod_spec(sts)["containers"]
    image, _, tag = c["image"].partition(":")
    assert image == "nats" and tuple(map(int, re.findall(r"\d+", tag)[:2])) >= (2, 10)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]

    headless = named(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = named(objs, "Service", "nats")
    assert [p["port"] for p in client["spec"]["ports"]] == [4222]
    for svc in (headless, client):
        assert _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(sts))
    pdb = next(p for p in of_kind(objs, "PodDisruptionBudget")
               if _selects(p["spec"]["selector"], pod_labels(sts)))
    assert pdb["spec"]["maxUnavailable"] == 1  # a quorum of an R3 stream survives

    config = nats_config(objs)
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*\"?/data\"?", config)
    routes = set(re.findall(r"nats://([\w.-]+):6222", config))
    sts_name, svc = sts["metadata"]["name"], headless["metadata"]["name"]
    assert routes == {f"{sts_name}-{i}.{svc}" for i in range(3)}
    assert "server_name: $SERVER_NAME" in config
    env = {e["name"]: e for e in c["env"]}
    assert env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"
    # one server per node, or "survives the loss of a node" is not true
    (term,) = pod_spec(sts)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["labelSelector"], pod_labels(sts))
    assert re.search(r"^\s+sync_interval: always$", config, re.M)


@pytest.mark.parametrize("name", OVERLAYS)
def test_conveyor_replicas_fit_the_nats_cluster(name: str) -> None:
    """Every Conveyor container asks for replicas the NATS cluster can hold (and 3 of 3)."""
    objs = overlay(name)
    (sts,) = of_kind(objs, "StatefulSet")
    servers = sts["spec"]["replicas"]
    for w in workloads(objs):
        if not is_conveyor(w):
            continue
        (c,) = pod_spec(w)["containers"]
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref:
                env.update(named(objs, "ConfigMap", ref["name"])["data"])
        env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
        args = c.get("args", [])
        asked = args[args.index("--replicas") + 1] if "--replicas" in args \
            else env.get("CONVEYOR_REPLICAS")
        where = f"{w['kind']}/{w['metadata']['name']}"
        assert asked is not None, f"{where}: no CONVEYOR_REPLICAS"
        assert 1 <= int(asked) <= servers, f"{where}: {asked} replicas on {servers} servers"
        assert int(asked) == 3, where


def nats_config(objs: tuple[Obj, ...]) -> str:
    (sts,) = of_kind(objs, "StatefulSet")
    volume = next(v for v in pod_spec(sts)["volumes"] if "configMap" in v)
    return named(objs, "ConfigMap", volume["configMap"]["name"])["data"]["nats.conf"]


NATS_USERS = ("git-watcher", "renderer", "applier", "notifier", "api")


def nats_password_env(user: str) -> str:
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def runnable_nats_config(tmp_path: Path, *, port: int = 0) -> tuple[Path, dict[str, str]]:
    """The base's nats.conf made runnable here: a throwaway certificate in place of the
    mounted Secret, a password per user in the environment; with a ``port`` also without the
    cluster block, storing and listening here (a real, standalone server)."""
    from tests.support.kubeapi.certs import TestPKI

    pki = TestPKI()
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_bytes(pki.server.cert_pem)
    (tls / "tls.key").write_bytes(pki.server.key_pem)
    (tls / "ca.crt").write_bytes(pki.ca_pem)
    text = nats_config(overlay(OVERLAYS[0])).replace("/etc/nats-tls", str(tls))
    if port:
        start = text.index("cluster {")
        depth, end = 0, start
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0 and text[end] == "}":
                break
        text = text[:start] + text[end + 1:]
        text = (text.replace('"/data"', f'"{tmp_path / "js"}"')
                .replace('"/var/run/nats/nats.pid"', f'"{tmp_path / "nats.pid"}"'))
        text = re.sub(r"^port: 4222$", f"port: {port}", text, flags=re.MULTILINE)
        text = re.sub(r"^http_port: 8222$", "", text, flags=re.MULTILINE)
    conf = tmp_path / "nats.conf"
    conf.write_text(text)
    env = {"SERVER_NAME": "nats-0", **{nats_password_env(u): f"pw-{u}" for u in NATS_USERS}}
    return conf, env


def test_nats_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    server = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(server).exists():
        pytest.skip("nats-server is not installed")
    conf, env = runnable_nats_config(tmp_path)
    proc = subprocess.run([server, "-t", "-c", str(conf)], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _user_block(config: str, user: str) -> str:
    match = re.search(r"\{user: " + re.escape(user) + r", (.*?)\}\}\}", config, re.DOTALL)
    assert match, f"no NATS user {user}"
    return match.group(1)


def _subjects(block: str, kind: str) -> set[str]:
    found = re.search(kind + r": \[([^\]]*)\]", block)
    return set(re.findall(r'"([^"]+)"', found.group(1))) if found else set()


@pytest.mark.parametrize("name", OVERLAYS)
def test_nats_has_a_user_per_service_with_only_its_own_subjects_and_tls(name: str) -> None:
    objs = overlay(name)
    config = nats_config(objs)
    assert "authorization {" in config and "no_auth_user" not in config
    (sts,) = of_kind(objs, "StatefulSet")
    (server,) = pod_spec(sts)["containers"]
    server_env = {e["name"]: e for e in server["env"]}
    for user in NATS_USERS:
        block = _user_block(config, user)
        var = nats_password_env(user)
        assert f"password: ${var}" in block
        ref = server_env[var]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("conveyor-nats", f"{user}-password")
        # its replies only under its own inbox prefix (no user reads another's answers)
        assert _subjects(block, "subscribe: {allow") == {f"_INBOX_{user}.>"}
    # what the server will decide, read from the shipped config itself (deny wins)
    def may(user: str, subject: str) -> bool:
        from orchestrator.adapters.nats_permissions import matches

        block = _user_block(config, user)
        allow = _subjects(block, "publish: {allow")
        return any(matches(p, subject) for p in allow) and \
            not any(matches(p, subject) for p in _subjects(block, "deny"))

    for user in NATS_USERS:  # nobody deletes or purges the log
        assert not may(user, "$JS.API.STREAM.DELETE.CONVEYOR"), user
        assert not may(user, "$JS.API.STREAM.PURGE.CONVEYOR"), user
        # only the api publishes control (refresh) events
        assert may(user, "conveyor.events._.refresh.requested") == (user == "api"), user
    # the renderer cannot publish apply.*
    assert not may("renderer", "conveyor.events.dev.apply.succeeded")
    # every Conveyor container connects as its own user, with its password and the CA
    for w in workloads(objs):
        if not is_conveyor(w):
            continue
        (c,) = pod_spec(w)["containers"]
        env = {e["name"]: e for e in c["env"]}
        user = env["CONVEYOR_NATS_USER"]["value"]
        assert user == component(w) and user in NATS_USERS
        ref = env["CONVEYOR_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("conveyor-nats", f"{user}-password")
        ca = env["CONVEYOR_NATS_CA"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        ca_dir = mounts[str(Path(ca).parent)]
        volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == ca_dir)
        assert volume["secret"]["secretName"] == "nats-tls"
        assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]  # never the key
    # TLS for clients and routes, from the mounted Secret
    assert re.search(r"^tls \{[^}]*cert_file", config, re.MULTILINE)
    assert re.search(r"cluster \{.*?tls \{[^}]*verify: true", config, re.DOTALL)
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    tls_volume = next(v for v in pod_spec(sts)["volumes"] if v["name"] == mounts["/etc/nats-tls"])
    assert tls_volume["secret"]["secretName"] == "nats-tls"


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_api_answers_to_its_service_names(name: str) -> None:
    from conveyor.options import hosts
    from services.api.browser import HostAllowlist

    objs = overlay(name)
    api = next(w for w in workloads(objs) if component(w) == "api")
    (c,) = pod_spec(api)["containers"]
    env = {e["name"]: e.get("value", "") for e in c["env"]}
    allowlist = HostAllowlist("0.0.0.0:8080", hosts(env["CONVEYOR_ALLOWED_HOSTS"]))
    service = named(objs, "Service", "conveyor-api")["metadata"]
    namespace = service.get("namespace", NAMESPACE)
    for host in (service["name"], f"{service['name']}.{namespace}",
                 f"{service['name']}.{namespace}.svc.cluster.local"):
        assert allowlist.allows(host), host
    assert not allowlist.allows("evil.example")
    # and it can have a read-only role, from the same Secret
    ref = next(e for e in c["env"] if e["name"] == "CONVEYOR_READ_TOKEN")["valueFrom"]
    assert (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]) == ("conveyor-api",
                                                                           "read-token")


# -- secrets -----------------------------------------------------------------------------------

def referenced_secrets(objs: tuple[Obj, ...]) -> Iterator[tuple[str, bool]]:
    """(name, optional) of every Secret a workload refers to."""
    for w in workloads(objs):
        spec = pod_spec(w)
        for v in spec.get("volumes", []):
            if "secret" in v:
                yield v["secret"]["secretName"], bool(v["secret"].get("optional"))
        for v in spec.get("volumes", []):
            if "secret" in v:
                yield v["secret"]["secretName"], bool(v["secret"].get("optional"))
        for c in spec["containers"]:
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    yield e["secretRef"]["name"], bool(e["secretRef"].get("optional"))
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    yield ref["name"], bool(ref.get("optional"))


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_render_no_secrets_and_the_template_names_every_one_they_use(name: str) -> None:
    objs = overlay(name)
    assert not of_kind(objs, "Secret"), "apply -k must never overwrite real credentials"
    template = {s["metadata"]["name"] for s in render("secrets-example")}
    used = {n for n, _ in referenced_secrets(objs)}
    assert used <= template, f"missing from k8s/secrets-example: {used - template}"
    required = {n for n, optional in referenced_secrets(objs) if not optional}
    assert "conveyor-api" in required  # the api refuses to listen off loopback without a token


def test_the_secret_template_carries_no_values() -> None:
    for secret in render("secrets-example"):
        assert secret["kind"] == "Secret"
        assert secret["metadata"]["namespace"] == NAMESPACE
        for key, value in {**secret.get("data", {}), **secret.get("stringData", {})}.items():
            assert base64.b64decode(value or "") == b"", f"{secret['metadata']['name']}/{key}"


CREDENTIAL = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|hooks\.slack\.com/services/T"
    r"|(?:token|password|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{24,}",
    re.IGNORECASE,
)


def test_no_file_under_k8s_or_the_docs_holds_a_credential() -> None:
    files = [p for p in K8S.rglob("*") if p.is_file()]
    files += [ROOT / "docs" / "install-kubernetes.md"]
    for path in files:
        if path.exists():
            match = CREDENTIAL.search(path.read_text())
            assert match is None, f"{path.relative_to(ROOT)}: {match.group(0)[:20]}..."


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_credential_is_written_into_a_manifest(name: str) -> None:
    for w in workloads(overlay(name)):
        for c in pod_spec(w)["containers"]:
            for e in c.get("env", []):
                if e["name"].endswith("_FILE"):  # a path: into a mounted Secret
                    assert secret_behind(w, c, e["value"]), f"{e['name']} names no Secret file"
                elif any(word in e["name"].upper() for word in ("TOKEN", "SECRET", "PASSWORD")):
                    assert "valueFrom" in e, f"{e['name']} must come from a Secret"
    for cm in of_kind(overlay(name), "ConfigMap"):
        assert not CREDENTIAL.search(yaml.safe_dump(cm))


def secret_behind(workload: Obj, container: Obj, path: str) -> str | None:
    """The Secret whose volume ``container`` mounts at the directory holding ``path``."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if path.startswith(m["mountPath"].rstrip("/") + "/") and "secret" in volumes[m["name"]]:
            return str(volumes[m["name"]]["secret"]["secretName"])
    return None


# -- GitOps: push credentials and the forge --------------------------------------------------

GITOPS = "conveyor-gitops"
PUSH_READERS = {"api", "git-watcher"}  # releases/previews; auto-promotion and pullRequests


def gitops_holders(objs: tuple[Obj, ...]) -> set[str]:
    """The components whose pods can read the Secret conveyor-gitops, by any means."""
    out = set()
    for w in workloads(objs):
        spec = pod_spec(w)
        mounts = [v for v in spec.get("volumes", []) if (v.get("secret") or {}).get(
            "secretName") == GITOPS]
        refs = [e for c in spec["containers"] for e in [*c.get("env", []), *c.get("envFrom",
                                                                                 [])]
                if GITOPS in yaml.safe_dump(e)]
        if mounts or refs:
            out.add(component(w))
    return out


def container_env(objs: tuple[Obj, ...], workload: Obj) -> dict[str, str]:
    """What the container's process sees: the ConfigMaps of envFrom, then env's values (a
    secretKeyRef stands as ``<secret>``)."""
    (c,) = pod_spec(workload)["containers"]
    out: dict[str, str] = {}
    for e in c.get("envFrom", []):
        if "configMapRef" in e:
            cms = [m for m in of_kind(objs, "ConfigMap")
                   if m["metadata"]["name"] == e["configMapRef"]["name"]]
            out.update(cms[0].get("data", {}))
    for e in c.get("env", []):
        out[e["name"]] = e.get("value", "<secret>")
    return out


@pytest.mark.parametrize("name", OVERLAYS)
def test_push_credentials_and_the_forge_token_reach_the_api_and_watcher_only(name: str) -> None:
    """A process that renders a pull request's head (the renderer) must not hold push
    credentials: conveyor-gitops is mounted in the api and the git-watcher, optional, and
    nowhere else (appliers push deploy branches with their own conveyor-applier-<env>)."""
    from orchestrator.adapters.git_source import push_credentials_from_env
    from orchestrator.gitops.forge import ForgeSettings

    objs = overlay(name)
    assert gitops_holders(objs) == PUSH_READERS
    template = {s["metadata"]["name"]: s for s in render("secrets-example")}
    keys = set(template[GITOPS]["data"])
    assert keys == {"git-token", "forge-token"}
    for w in workloads(objs):
        env = container_env(objs, w)
        if component(w) not in PUSH_READERS:
            assert not [k for k in env if k.startswith("CONVEYOR_GIT_PUSH_")
                        and env[k]], component(w)
            assert not env.get("CONVEYOR_FORGE_TOKEN") and not env.get(
                "CONVEYOR_FORGE_TOKEN_FILE"), component(w)
            continue
        (c,) = pod_spec(w)["containers"]
        volume = next(v for v in pod_spec(w)["volumes"]
                      if (v.get("secret") or {}).get("secretName") == GITOPS)
        assert volume["secret"]["optional"] is True  # the base applies without it
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        for var, key in (("CONVEYOR_GIT_PUSH_TOKEN_FILE", "git-token"),
                         ("CONVEYOR_FORGE_TOKEN_FILE", "forge-token")):
            assert env[var] == f"{mount['mountPath']}/{key}" and key in keys
        # the process reads these exactly as documented: the push token file, the username
        # of the ConfigMap (empty = unset), and no forge until the operator names one
        creds = push_credentials_from_env(env)
        assert creds == {"tokenFile": env["CONVEYOR_GIT_PUSH_TOKEN_FILE"]}
        assert ForgeSettings.from_env(env) is None
        configured = {**env, "CONVEYOR_FORGE": "bitbucket", "CONVEYOR_GIT_PUSH_USERNAME": "ci"}
        forge = ForgeSettings.from_env(configured)
        assert forge is not None and forge.token_file == env["CONVEYOR_FORGE_TOKEN_FILE"]
        assert push_credentials_from_env(configured)["username"] == "ci"
    (config,) = [m for m in of_kind(objs, "ConfigMap")
                 if m["metadata"]["name"].startswith("conveyor-config")]
    for key in ("CONVEYOR_FORGE", "CONVEYOR_FORGE_API_URL", "CONVEYOR_FORGE_REPO",
                "CONVEYOR_FORGE_USERNAME", "CONVEYOR_GIT_PUSH_USERNAME"):
        assert config["data"][key] == "", key  # documented, empty: the operator fills them


# -- references and availability -----------------------------------------------------------------

@pytest.mark.parametrize("name", OVERLAYS)
def test_references_resolve(name: str) -> None:
    objs = overlay(name)
    for w in workloads(objs):
        spec = pod_spec(w)
        if "serviceAccountName" in spec:
            named(objs, "ServiceAccount", spec["serviceAccountName"])
        for v in spec.get("volumes", []):
            if "configMap" in v:
                named(objs, "ConfigMap", v["configMap"]["name"])
        for c in spec["containers"]:
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    named(objs, "ConfigMap", e["configMapRef"]["name"])
    for svc in of_kind(objs, "Service"):
        targets = [w for w in workloads(objs)
                   if _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in pod_spec(targets[0])["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_replicated_workload_has_a_disruption_budget_that_allows_a_drain(name: str) -> None:
    objs = overlay(name)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for w in workloads(objs):
        covering = [p for p in pdbs if _selects(p["spec"]["selector"], pod_labels(w))]
        replicas = w["spec"].get("replicas", 1)
        if replicas == 1:
            # a budget on a single replica would block every node drain: singletons use
            # Recreate instead and restart elsewhere
            assert not covering and w["spec"]["strategy"]["type"] == "Recreate"
            continue
        assert len(covering) == 1, w["metadata"]["name"]
        spec = covering[0]["spec"]
        allowed_down = spec.get("maxUnavailable", replicas - spec.get("minAvailable", replicas))
        assert 1 <= allowed_down < replicas


# -- the image ---------------------------------------------------------------------------------

def test_containerfile_builds_a_non_root_image_with_the_conveyor_entrypoint() -> None:
    text = (ROOT / "Containerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: wheels are built apart from the runtime"
    assert re.search(r"^ARG BASE=python:3\.11-slim", text, re.MULTILINE), \
        "the base is a build argument"
    assert re.search(rf"^USER {UID}(:{UID})?$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["conveyor"\]$', text, re.MULTILINE)
    assert "openssh-client" in text and "gnupg" in text
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()
    items = [s for line in copied for s in shlex.split(line)]
    if "." in items:  # the whole context: the ignore file's allow-list decides what goes in
        items = ["pyproject.toml", "README.md", "conveyor", "orchestrator", "services"]
    for item in items:
        assert (ROOT / item).exists(), item
        assert f"!{item}" in ignore or f"!{item}/" in ignore, f"{item} is excluded from the context"
    assert ignore[0] == "*", "the context is an allow-list: .venv, .git and local files stay out"
