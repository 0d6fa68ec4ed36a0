"""`conveyor health FILE|-`: manifest streams in, one health line (or JSON item) per object."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.commands.health import health_command

FIXTURES = Path(__file__).parent / "fixtures" / "health"


def run(file: str, output: str = "text", stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = health_command(file, output, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def stream(*names: str) -> str:
    return "---\n".join((FIXTURES / name).read_text() for name in names)


def test_multi_document_yaml_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(stream("deployment-progressing.yaml", "crd-established.yaml",
                           "configmap.yaml", "pod-crashloop.yaml") + "---\n")
    code, out, err = run(str(path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Deployment/shop/web: Progressing (Waiting for rollout to finish: 1 out of 3 new "
        "replicas have been updated...)",
        "CustomResourceDefinition/widgets.example.com: Healthy (CRD is healthy)",
        "ConfigMap/shop/settings: n/a (no health assessment)",
        "Pod/shop/web-7d9c6b8f5-abcde: Degraded (back-off 5m0s restarting failed container=web "
        "pod=web-7d9c6b8f5-abcde_shop)",
    ]


def test_message_is_omitted_when_empty() -> None:
    code, out, _ = run("-", stdin=stream("pvc-bound.yaml"))
    assert (code, out) == (0, "PersistentVolumeClaim/shop/data: Healthy\n")


def test_kubectl_list_from_stdin() -> None:
    items = [yaml.safe_load((FIXTURES / n).read_text())
             for n in ("statefulset-healthy.yaml", "service-loadbalancer-pending.yaml")]
    listing = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items,
                              "metadata": {"resourceVersion": ""}})
    code, out, _ = run("-", stdin=listing)
    assert code == 0
    assert [line.split(":")[0:2] for line in out.splitlines()] == [
        ["StatefulSet/shop/db", " Healthy (partitioned roll out complete"],
        ["Service/shop/web-public", " Progressing (Waiting for the load balancer's address)"]]


def test_typed_api_list_fills_kind_and_api_version_of_items() -> None:
    item = yaml.safe_load((FIXTURES / "deployment-degraded.yaml").read_text())
    del item["apiVersion"], item["kind"]
    listing = json.dumps({"apiVersion": "apps/v1", "kind": "DeploymentList", "items": [item]})
    code, out, _ = run("-", stdin=listing)
    assert (code, out) == (0, 'Deployment/shop/web: Degraded (Deployment "web" exceeded its '
                              "progress deadline)\n")


def test_json_input_and_output() -> None:
    objects = [yaml.safe_load((FIXTURES / n).read_text())
               for n in ("job-failed.yaml", "secret.yaml", "apiservice-available.yaml")]
    code, out, err = run("-", "json", stdin=json.dumps({"kind": "List", "apiVersion": "v1",
                                                        "items": objects}, indent=2))
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"kind": "Job", "namespace": "shop", "name": "migrate", "status": "Degraded",
         "message": "Job has reached the specified backoff limit", "rule": "built-in"},
        {"kind": "Secret", "namespace": "shop", "name": "credentials", "status": None,
         "message": "", "rule": "built-in"},
        {"kind": "APIService", "namespace": "", "name": "v1beta1.metrics.k8s.io",
         "status": "Healthy", "message": "Passed: all checks passed", "rule": "built-in"},
    ]


def test_a_single_json_object() -> None:
    obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    code, out, _ = run("-", stdin=json.dumps(obj))
    assert (code, out) == (0, "Namespace/shop: n/a (no health assessment)\n")


def test_empty_input_prints_nothing() -> None:
    assert run("-", stdin="") == (0, "", "")
    assert run("-", "json", stdin="---\n") == (0, "[]\n", "")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n")
    code, out, err = run(str(path))
    assert code == 1 and out == ""
    assert err.startswith(f"conveyor health: {path}:")
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert line >= 4


def test_json_syntax_error_names_line_and_column() -> None:
    code, out, err = run("-", stdin='{\n  "kind": "Pod",\n  "metadata": {\n}')
    assert (code, out) == (1, "")
    assert err.startswith("conveyor health: <stdin>:4:2: invalid JSON:")


def test_a_document_that_is_not_an_object_is_refused_with_its_line() -> None:
    text = stream("configmap.yaml") + "---\n- just\n- a list\n"
    code, out, err = run("-", stdin=text)
    assert (code, out) == (1, "")
    assert err == ("conveyor health: <stdin>:9: not a Kubernetes object (expected a mapping "
                   "with apiVersion and kind)\n")


def test_a_list_item_that_is_not_an_object_names_its_line() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n"
            "  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: a}\n"
            "  - 42\n")
    code, _, err = run("-", stdin=text)
    assert code == 1
    assert err.startswith("conveyor health: <stdin>:7: not a Kubernetes object")


def test_objects_without_a_name_are_assessed() -> None:
    text = ("apiVersion: v1\nkind: ConfigMap\ndata: {}\n---\n"
            "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata:\n"
            "  generateName: build-\n  namespace: ci\nstatus: {phase: Failed, message: boom}\n")
    code, out, err = run("-", stdin=text)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["ConfigMap/(unnamed): n/a (no health assessment)",
                                "Workflow/ci/build-*: Degraded (boom)"]


def test_a_kind_without_any_rule_says_so() -> None:
    code, out, _ = run("-", "json", stdin=stream("custom-no-conditions.yaml"))
    assert code == 0
    assert json.loads(out)[0] | {"status": None, "rule": ""} == json.loads(out)[0]
    _, text, _ = run("-", stdin=stream("custom-no-conditions.yaml"))
    assert text == "Widget/shop/hello: n/a (no health rule)\n"


def test_metadata_that_is_not_a_mapping_is_refused() -> None:
    code, _, err = run("-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: [x]\n")
    assert code == 1
    assert err == "conveyor health: <stdin>:1: ConfigMap: metadata must be a mapping\n"


def test_missing_file() -> None:
    code, out, err = run("/nonexistent/manifests.yaml")
    assert (code, out) == (1, "")
    assert err == ("conveyor health: cannot read /nonexistent/manifests.yaml: No such file or "
                   "directory\n")


def test_unknown_output_format() -> None:
    code, out, err = run("-", "xml", stdin="")
    assert (code, out) == (2, "")
    assert "unknown output format 'xml'" in err


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.yaml")))
def test_every_fixture_goes_through_the_command(name: str) -> None:
    code, out, err = run(str(FIXTURES / name), "json")
    assert (code, err) == (0, "")
    assert len(json.loads(out)) == 1
