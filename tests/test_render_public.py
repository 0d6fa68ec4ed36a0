"""Public inputs - Argo CD's example apps, kustomize's examples, Flux's and podinfo's repositories
- render exactly as the reference tool renders them, or fail with a clear reason.

Each fixture under ``fixtures/public/<name>`` names its origin in ``SOURCE.md``. Objects are
compared as sets (order-insensitive) with what the reference tool prints when run directly on
the same directory: ``kubectl kustomize``, the helm SDK engine (``helm template``'s), the
jsonnet library, or the YAML files themselves for plain directories.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import ConveyorError, ManifestError, PermanentError
from orchestrator.rendering import render
from orchestrator.rendering.command import render_command
from orchestrator.rendering.helm import merge_values, sdk_available

PUBLIC = Path(__file__).parent / "fixtures" / "public"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
needs_helm = pytest.mark.skipif(not sdk_available(), reason="helm-python-sdk not installed")


def as_set(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objects)


def ours(env: str, settings: dict[str, Any] | None = None, renderer: str | None = None
         ) -> list[dict[str, Any]]:
    result = render(PUBLIC, env, settings)
    if renderer is not None:
        assert result.renderer == renderer
    return [m.obj for m in result.manifests]


def kustomize_reference(env: str) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(PUBLIC / env)], check=True,
                         capture_output=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kustomize_error(env: str) -> str:
    out = subprocess.run([KUBECTL, "kustomize", str(PUBLIC / env)], capture_output=True)
    assert out.returncode != 0
    return out.stderr.decode()


def helm_reference(env: str, name: str, value_files: tuple[str, ...] = ()
                   ) -> list[dict[str, Any]]:
    import helm_python

    chart = helm_python.Chart.load(str(PUBLIC / env))
    values: dict[str, Any] = {}
    for value_file in value_files:
        values = merge_values(values, yaml.safe_load((PUBLIC / env / value_file).read_text()))
    rendered = chart.render(values, name=name, namespace="default", revision=1,
                            is_install=True)
    # as `helm template`: no NOTES.txt, no partials
    return [d for path, text in rendered.items()
            if not path.endswith("NOTES.txt") and not path.rsplit("/", 1)[-1].startswith("_")
            for d in yaml.safe_load_all(text) if d]


def jsonnet_reference(path: str, **tla_codes: str) -> list[dict[str, Any]]:
    import _jsonnet

    value = json.loads(_jsonnet.evaluate_file(str(PUBLIC / path), tla_codes=tla_codes))
    return value if isinstance(value, list) else [value]


def plain_reference(env: str, recurse: bool = True) -> list[dict[str, Any]]:
    files = (PUBLIC / env).rglob("*") if recurse else (PUBLIC / env).glob("*")
    objects: list[dict[str, Any]] = []
    for file in sorted(files):
        if file.suffix in (".yaml", ".yml", ".json"):
            objects += [d for d in yaml.safe_load_all(file.read_text("utf-8-sig")) if d]
    return objects


def cli(path: Path, env: str | None, output: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = render_command(path, env, output, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# --- inputs that render as the reference tool does ------------------------------------------

@pytest.mark.parametrize("env", [
    "argocd-kustomize-guestbook",                     # configMapGenerator, namePrefix
    "kustomize-helloworld",                           # commonLabels, comments atop files
    "kustomize-wordpress",                            # vars, patchesStrategicMerge, 2 bases
    "kustomize-transformerconfigs-images",            # configurations: (a kustomizeconfig dir)
    "flux2-kustomize-helm-example/apps/base/podinfo",  # Flux CRs are plain objects to us
    "flux2-kustomize-helm-example/apps/staging",      # targeted patch of a HelmRelease
    "podinfo-kustomize",                              # `---` then an empty document
])
def test_kustomize_inputs_match_kubectl_kustomize(env: str) -> None:
    assert as_set(ours(env, renderer="kustomize")) == as_set(kustomize_reference(env))


def test_plain_argocd_guestbook_matches_its_files() -> None:
    assert as_set(ours("argocd-guestbook", renderer="plain")) == \
        as_set(plain_reference("argocd-guestbook"))


@needs_helm
@pytest.mark.parametrize("value_files", [(), ("values-production.yaml",)])
def test_argocd_helm_guestbook_matches_the_helm_engine(value_files: tuple[str, ...]) -> None:
    settings = {"helm": {"valueFiles": list(value_files)}}
    got = ours("argocd-helm-guestbook", settings, renderer="helm")
    assert as_set(got) == as_set(helm_reference("argocd-helm-guestbook",
                                                "argocd-helm-guestbook", value_files))
    assert {o["kind"] for o in got} == {"Deployment", "Service"}  # NOTES.txt, _helpers dropped


def _not_a_test(obj: dict[str, Any]) -> bool:
    hook = obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return not str(hook).startswith("test")


@needs_helm
@pytest.mark.parametrize("value_files", [(), ("values-prod.yaml",)])
def test_podinfo_chart_matches_the_helm_engine(value_files: tuple[str, ...]) -> None:
    settings = {"helm": {"releaseName": "podinfo", "valueFiles": list(value_files)}}
    got = ours("podinfo-chart", settings, renderer="helm")
    reference = helm_reference("podinfo-chart", "podinfo", value_files)
    # test pods carry `randAlphaNum` names: equal but for that suffix
    assert as_set([o for o in got if _not_a_test(o)]) == \
        as_set([o for o in reference if _not_a_test(o)])
    tests = sorted(o["metadata"]["name"].rsplit("-", 1)[0] for o in got if not _not_a_test(o))
    assert tests == ["podinfo-grpc-test", "podinfo-service-test"]
    kinds = {o["kind"] for o in got}
    assert "Job" in kinds                                 # the post-install hook is kept
    skipped = ours("podinfo-chart", {"helm": {"releaseName": "podinfo", "skipTests": True}})
    assert all(_not_a_test(o) for o in skipped)


def test_argocd_jsonnet_guestbook_matches_the_jsonnet_library() -> None:
    env = "argocd-jsonnet-guestbook"
    assert as_set(ours(env, renderer="jsonnet")) == \
        as_set(jsonnet_reference(f"{env}/guestbook-ui.jsonnet"))


def test_argocd_jsonnet_guestbook_tla_defaults_and_overrides() -> None:
    env = "argocd-jsonnet-guestbook-tla"
    main = f"{env}/guestbook-ui.jsonnet"
    assert as_set(ours(env, renderer="jsonnet")) == as_set(jsonnet_reference(main))
    settings = {"jsonnet": {"tlas": [{"name": "replicas", "value": "3", "code": True},
                                     {"name": "name", "value": "gb"}]}}
    assert as_set(ours(env, settings)) == \
        as_set(jsonnet_reference(main, replicas="3", name='"gb"'))


# --- inputs that must fail, and say why -------------------------------------------------------

def errors_of(env: str, settings: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConveyorError) as info:
        render(PUBLIC, env, settings)
    exc = info.value
    return "\n".join(exc.errors) if isinstance(exc, ManifestError) else exc.message


def test_argocd_helm_dependency_not_vendored_is_a_clear_error() -> None:
    message = errors_of("argocd-helm-dependency")
    assert "argocd-helm-dependency/Chart.yaml:9:3: chart dependency 'wordpress' is not " \
           "vendored" in message
    assert "helm dependency build" in message


def test_argocd_sync_waves_generate_name_hooks_are_refused_with_the_reason() -> None:
    message = errors_of("argocd-sync-waves")
    assert message.count("metadata.generateName is not supported") == 3
    assert "argocd-sync-waves/manifests.yaml:5:3:" in message       # points at generateName


def test_argocd_pre_post_sync_files_outside_the_kustomization_fail_as_in_kustomize() -> None:
    # kustomize's load restrictor refuses files (not directories) above the kustomization
    assert "is not in or below" in kustomize_error("argocd-pre-post-sync")
    assert "is not in or below" in errors_of("argocd-pre-post-sync")


def test_kustomize_multibases_old_api_version_fails_as_in_kustomize() -> None:
    assert "apiVersion for Kustomization should be" in kustomize_error("kustomize-multibases")
    assert "apiVersion for Kustomization should be" in errors_of("kustomize-multibases")


def test_argocd_kustomized_helm_chart_and_kustomization_is_kustomize_like_argo() -> None:
    # Chart.yaml and kustomization.yaml side by side: Argo CD picks Kustomize, so do we;
    # all.yaml is what the Argo CD plugin would have generated - it is not in the repository
    message = errors_of("argocd-kustomized-helm")
    assert "argocd-kustomized-helm/kustomization.yaml:4:3: './all.yaml' does not exist" \
           in message


def test_kustomize_helm_charts_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "charts/web/templates").mkdir(parents=True)
    (tmp_path / "charts/web/Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 1.0.0\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nhelmGlobals:\n  chartHome: charts\nhelmCharts:\n- name: web\n")
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "")
    assert info.value.errors == [
        "kustomization.yaml:4:1: helmCharts is not supported: kustomize would need "
        "--enable-helm, which runs helm and downloads charts; render the chart as an "
        "environment of its own (render.type: helm), or commit its rendered output and list "
        "it under resources"]


# --- plain-directory edge cases ------------------------------------------------------------

def test_plain_edge_cases_crlf_bom_comments_lists_json_and_non_manifests() -> None:
    names = sorted(o["metadata"]["name"] for o in ours("plain-edge-cases", renderer="plain"))
    # values.yaml, kustomizeconfig/, renovate.json, README.md and .github/ are not manifests
    assert names == ["after-comments", "bom", "crlf", "from-list-a", "from-list-b",
                     "json-svc", "second"]


def test_non_manifest_yaml_is_skipped_but_a_broken_file_is_not(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("image:\n  tag: 1.0\n")
    (tmp_path / "chart").mkdir()
    (tmp_path / "chart/Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 1.0.0\n")
    (tmp_path / "hosts.yaml").write_text("- a.example.com\n- b.example.com\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n")
    assert [o["metadata"]["name"] for o in ours_at(tmp_path)] == ["a"]
    # stricter than Argo CD: a file that does not parse is reported, whatever it holds
    (tmp_path / "template.yaml").write_text("{{ if .x }}\nfoo: [\n")
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "")
    assert [e.split(":")[0] for e in info.value.errors] == ["template.yaml"]
    (tmp_path / "template.yaml").unlink()
    # objects mixed with non-objects in one file: a manifest with a mistake, reported
    (tmp_path / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                                          "  name: b\n---\nimage: x\n")
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "")
    assert info.value.errors == ["broken.yaml:6:1: missing apiVersion",
                                 "broken.yaml:6:1: missing kind",
                                 "broken.yaml:6:1: missing metadata.name"]


def ours_at(root: Path) -> list[dict[str, Any]]:
    return [m.obj for m in render(root, "").manifests]


# --- `conveyor render` on every public input that renders ------------------------------------

RENDERABLE = ["argocd-guestbook", "argocd-kustomize-guestbook", "argocd-jsonnet-guestbook",
              "argocd-jsonnet-guestbook-tla", "kustomize-helloworld", "kustomize-wordpress",
              "kustomize-transformerconfigs-images", "flux2-kustomize-helm-example/apps/staging",
              "podinfo-kustomize", "plain-edge-cases"]


@pytest.mark.parametrize("env", [*RENDERABLE,
                                 pytest.param("argocd-helm-guestbook", marks=needs_helm),
                                 pytest.param("podinfo-chart", marks=needs_helm)])
def test_conveyor_render_exits_0(env: str) -> None:
    code, out, err = cli(PUBLIC / env, None, "yaml")
    assert (code, err) == (0, "")
    assert [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("env", ["argocd-helm-dependency", "argocd-sync-waves",
                                 "argocd-kustomized-helm", "kustomize-multibases"])
def test_conveyor_render_exits_1_with_the_reason(env: str) -> None:
    code, out, err = cli(PUBLIC / env, None, "yaml")
    assert code == 1 and out == "" and err.strip()


def test_every_fixture_names_its_source() -> None:
    for fixture in PUBLIC.iterdir():
        text = (fixture / "SOURCE.md").read_text()
        assert "Repository:" in text and "Commit" in text, fixture.name


def test_settings_errors_are_permanent() -> None:
    with pytest.raises(PermanentError):
        render(PUBLIC, "argocd-guestbook", {"recurse": "yes"})


# --- the jsonnet command-line tool itself (Debian's `jsonnet`; CI installs it) -----------------

JSONNET_CLI = shutil.which("jsonnet")


@pytest.mark.skipif(JSONNET_CLI is None, reason="the jsonnet CLI is not installed "
                                                "(apt-get install jsonnet)")
@pytest.mark.parametrize(("env", "main", "cli_args", "settings"), [
    ("argocd-jsonnet-guestbook", "guestbook-ui.jsonnet", [], None),
    ("argocd-jsonnet-guestbook-tla", "guestbook-ui.jsonnet",
     ["--tla-code", "replicas=3", "--tla-str", "name=gb"],
     {"jsonnet": {"tlas": [{"name": "replicas", "value": "3", "code": True},
                           {"name": "name", "value": "gb"}]}}),
])
def test_jsonnet_matches_the_jsonnet_cli(env: str, main: str, cli_args: list[str],
                                         settings: dict[str, Any] | None) -> None:
    assert JSONNET_CLI is not None
    out = subprocess.run([JSONNET_CLI, *cli_args, str(PUBLIC / env / main)], check=True,
                         capture_output=True, text=True).stdout
    value = json.loads(out)
    expected = value if isinstance(value, list) else (
        value["items"] if value.get("kind") == "List" else [value])
    assert as_set(ours(env, settings, renderer="jsonnet")) == as_set(expected)
