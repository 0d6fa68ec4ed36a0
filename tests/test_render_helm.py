"""Helm charts render as `helm template` does: values layering, hooks, CRDs, vendored deps."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.bundle import object_key
from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import render
from orchestrator.rendering.helm import merge_values, sdk_available

FIXTURE = Path(__file__).parent / "fixtures" / "render" / "helm"
HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(HELM is None and not sdk_available(),
                                reason="neither the helm binary nor helm-python-sdk installed")
SETTINGS: dict[str, Any] = {"helm": {
    "releaseName": "shop", "namespace": "prod",
    "valueFiles": ["values-dev.yaml", "../../envs/prod/values.yaml"],
    "values": "extraLabels:\n  team: a\n", "valuesObject": {"extraLabels": {"team": "b"}}}}


def by_kind(settings: dict[str, Any], **kw: Any) -> dict[str, dict[str, Any]]:
    result = render(FIXTURE, "charts/web", settings, **kw)
    assert result.renderer == "helm"
    return {m.obj["kind"]: m.obj for m in result.manifests}


def test_merge_values_is_helms_rule() -> None:
    assert merge_values({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "d": None}) == \
        {"a": {"b": 1, "c": [2]}, "d": None}


@needs_helm
def test_values_layering_release_and_namespace() -> None:
    objs = by_kind(SETTINGS, values={"image": {"repository": "registry/nginx"}})
    deployment = objs["Deployment"]
    assert deployment["metadata"]["name"] == "shop-web"
    assert deployment["metadata"]["namespace"] == "prod"
    assert deployment["spec"]["replicas"] == 5                    # envs/prod/values.yaml wins
    assert deployment["metadata"]["labels"]["tier"] == "dev"      # from values-dev.yaml
    assert deployment["metadata"]["labels"]["team"] == "b"        # valuesObject over values
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry/nginx:1.27.3"                       # render values on top
    assert objs["ConfigMap"]["data"] == {"size": "huge"}          # subchart values


@needs_helm
def test_like_helm_template_hooks_tests_crds_no_notes() -> None:
    result = render(FIXTURE, "charts/web")
    kinds = sorted(m.obj["kind"] for m in result.manifests)
    assert kinds == ["ConfigMap", "CustomResourceDefinition", "Deployment", "Job", "Pod",
                     "Service"]
    assert {m.source for m in result.manifests} >= {"charts/web/templates/service.yaml:1",
                                                    "charts/web/crds/widgets.yaml:1"}
    names = {m.obj["metadata"]["name"] for m in result.manifests}
    assert "web-web" in names                                     # release = directory name
    objs = by_kind({"helm": {"skipCrds": True, "skipTests": True}})
    assert "CustomResourceDefinition" not in objs and "Pod" not in objs
    assert "Job" in objs                                          # other hooks are kept


@needs_helm
def test_capabilities() -> None:
    assert "ServiceMonitor" not in by_kind({})
    objs = by_kind({"helm": {"apiVersions": ["monitoring.coreos.com/v1"],
                             "kubeVersion": "1.30.0"}})
    assert "ServiceMonitor" in objs


@needs_helm
def test_subchart_can_be_disabled() -> None:
    assert "ConfigMap" not in by_kind({"helm": {"values": {"cache": {"enabled": False}}}})


@pytest.mark.skipif(HELM is None, reason="helm binary not on PATH: cannot compare with "
                                         "`helm template` (the SDK renders instead)")
def test_identical_to_helm_template() -> None:
    out = subprocess.run([HELM or "helm", "template", "shop", str(FIXTURE / "charts/web"),
                          "--namespace", "prod", "--include-crds",
                          "-f", str(FIXTURE / "charts/web/values-dev.yaml")],
                         check=True, capture_output=True)
    reference = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=object_key)
    result = render(FIXTURE, "charts/web", {"helm": {
        "releaseName": "shop", "namespace": "prod", "valueFiles": ["values-dev.yaml"]}})
    assert sorted((m.obj for m in result.manifests), key=object_key) == reference


@needs_helm
def test_identical_to_the_helm_sdk_engine() -> None:
    import helm_python

    chart = helm_python.Chart.load(str(FIXTURE / "charts/web"))
    rendered = chart.render({"replicaCount": 2, "extraLabels": {"tier": "dev"}}, name="shop",
                            namespace="prod", revision=1, is_install=True)
    reference = [d for name, text in rendered.items() if not name.endswith("NOTES.txt")
                 for d in yaml.safe_load_all(text) if d]
    reference += [yaml.safe_load(c["data"]) for c in chart.crds]
    result = render(FIXTURE, "charts/web", {"helm": {
        "releaseName": "shop", "namespace": "prod", "valueFiles": ["values-dev.yaml"]}})
    assert sorted((m.obj for m in result.manifests), key=object_key) == \
        sorted(reference, key=object_key)


def copy_chart(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


def test_unvendored_dependency_is_refused(tmp_path: Path) -> None:
    repo = copy_chart(tmp_path)
    shutil.rmtree(repo / "charts/web/charts/cache")
    with pytest.raises(ManifestError) as info:
        render(repo, "charts/web")
    assert info.value.errors == [
        "charts/web/Chart.yaml:6:5: chart dependency 'cache' is not vendored under "
        "charts/web/charts/ (run `helm dependency build` and commit charts/; renders never "
        "download)"]


def test_escapes_are_refused(tmp_path: Path) -> None:
    repo = copy_chart(tmp_path)
    (tmp_path / "secret.yaml").write_text("stolen: true\n")
    with pytest.raises(ManifestError, match="points outside the repository"):
        render(repo, "charts/web", {"helm": {"valueFiles": ["../../../secret.yaml"]}})
    os.symlink(tmp_path / "secret.yaml", repo / "charts/web/templates/leak.yaml")
    with pytest.raises(ManifestError, match="symlink points outside the repository"):
        render(repo, "charts/web")


def test_missing_values_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        render(FIXTURE, "charts/web", {"helm": {"valueFiles": ["nope.yaml"]}})


@needs_helm
def test_template_error_is_reported(tmp_path: Path) -> None:
    repo = copy_chart(tmp_path)
    (repo / "charts/web/templates/bad.yaml").write_text("x: {{ .Values.nope.deeper }}\n")
    with pytest.raises(ManifestError) as info:
        render(repo, "charts/web")
    assert "helm charts/web:" in info.value.errors[0]
    assert "bad.yaml" in info.value.errors[0]


@pytest.mark.skipif(HELM is not None or sdk_available(), reason="helm is installed")
def test_missing_helm_says_how_to_install() -> None:
    with pytest.raises(PermanentError, match="pip install helm-python-sdk"):
        render(FIXTURE, "charts/web")
