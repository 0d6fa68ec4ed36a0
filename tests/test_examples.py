"""The example repositories under ``examples/`` stay valid for what the code accepts.

For every example: ``parse_config`` accepts its conveyor.yaml, ``parse_routes`` its notifiers
(and each provider builds from the settings once their ``${VAR}`` are given values), its
sources' credentials and its kubernetes targets' settings are accepted, and every environment
renders without errors. An environment of another source renders from the fixture shipped
beside the example (``examples/<name>-platform`` for ``multi-source``). A few assertions pin
what each example's README says it shows.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.git_credentials import load_credentials
from orchestrator.domain import events as ev
from orchestrator.domain.config import DEFAULT_SOURCE, Config, expand_all, parse_config
from orchestrator.domain.events import Event
from orchestrator.domain.ordering import plan_waves, sync_wave
from orchestrator.notify import parse_routes, providers, render_route, select_routes
from orchestrator.rendering import RenderResult, render
from orchestrator.rendering.helm import sdk_available
from orchestrator.targets.kube.settings import kube_settings

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = ("plain-yaml", "kustomize-overlays", "helm-chart", "jsonnet", "kubernetes-target",
            "notifications", "multi-source")
# (example, source name) -> the directory standing for that source's repository
SOURCE_FIXTURES = {("multi-source", "platform"): EXAMPLES_DIR / "multi-source-platform"}
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "conveyor.yaml").is_file())
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def load(name: str) -> Config:
    path = EXAMPLES_DIR / name / "conveyor.yaml"
    return parse_config(path.read_text(encoding="utf-8"), file=f"examples/{name}/conveyor.yaml")


def fake_environ(value: Any) -> dict[str, str]:
    """A value for every ``${VAR}`` inside ``value``: a URL for *_URL, else a dummy string."""
    names = set(_VAR.findall(repr(value)))
    return {n: f"https://hooks.example.test/{n.lower()}" if n.endswith("URL") else f"test-{n}"
            for n in names}


def env_params() -> list[Any]:
    params = []
    for name in EXAMPLES:
        try:
            envs = sorted(load(name).environments)
        except Exception:  # reported by test_config_parses; keep collection going
            continue
        params += [pytest.param(name, env, id=f"{name}:{env}") for env in envs]
    return params


def kubectl_available() -> bool:
    return (Path(sys.executable).parent / "kubectl").exists() or shutil.which("kubectl") is not None


def render_env(name: str, env_name: str) -> RenderResult:
    env = load(name).environments[env_name]
    root = EXAMPLES_DIR / name
    if env.source != DEFAULT_SOURCE:
        fixture = SOURCE_FIXTURES.get((name, env.source))
        if fixture is None:
            pytest.skip(f"{name}:{env_name} renders from source {env.source!r}, whose "
                        "repository is not available here and has no fixture")
        root = fixture
    kind = env.render.get("type")
    helm = kind == "helm" or (root / env.path / "Chart.yaml").is_file()
    if helm and shutil.which("helm") is None and not sdk_available():
        pytest.skip("helm: neither the helm binary nor helm-python-sdk is installed")
    if (kind == "kustomize" or (root / env.path / "kustomization.yaml").is_file()) \
            and not kubectl_available():
        pytest.skip("kustomize: kubectl is not installed")
    return render(root, env.path, env.render)


def objects(name: str, env: str) -> dict[str, dict[str, Any]]:
    """``Kind/name`` -> object of one environment's render."""
    return {f"{m.obj['kind']}/{m.obj['metadata']['name']}": m.obj
            for m in render_env(name, env).manifests}


# --------------------------------------------------------------------------- every example


def test_every_example_is_present_with_a_readme() -> None:
    assert set(EXPECTED) <= set(EXAMPLES), f"missing: {set(EXPECTED) - set(EXAMPLES)}"
    for name in EXAMPLES:
        readme = (EXAMPLES_DIR / name / "README.md").read_text(encoding="utf-8")
        assert "conveyor render" in readme and "conveyor up --repo" in readme, name
    for fixture in SOURCE_FIXTURES.values():
        assert (fixture / "README.md").is_file()
        assert not (fixture / "conveyor.yaml").exists()


@pytest.mark.parametrize("name", EXAMPLES)
def test_config_parses(name: str) -> None:
    config = load(name)
    assert config.environments
    for route in parse_routes(config.notifiers):
        settings = expand_all(dict(route.settings), fake_environ(route.settings))
        providers.create(route.type, settings, route.name)
    for source in config.sources.values():
        assert source.url, f"{name}: source {source.name} has no url"
        load_credentials(source.credentials, source=source.name,
                         environ=fake_environ(source.credentials))
    for env in config.environments.values():
        if env.target_kind == "kubernetes":
            kube_settings(env.name, env.target["kubernetes"], env.sync)
        else:
            assert not env.sync, f"{name}:{env.name}: sync is for kubernetes targets"


@pytest.mark.parametrize(("name", "env"), env_params())
def test_environment_renders(name: str, env: str) -> None:
    result = render_env(name, env)
    assert result.manifests, f"{name}:{env} rendered no objects"
    plan_waves([m.obj for m in result.manifests])  # sync-wave annotations are integers


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_secret_is_written_in_the_config(name: str) -> None:
    config = load(name)
    secret_keys = {"token", "password", "secret", "sshKey", "sshPassphrase", "kubeconfig"}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key in secret_keys and isinstance(item, str):
                    assert _VAR.fullmatch(item.strip()), f"{name}: {where}.{key} is not ${{VAR}}"
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(config.raw, "")
    for route in parse_routes(config.notifiers):
        if route.type in ("teams", "webhook") or "url" in route.settings:
            assert _VAR.fullmatch(str(route.settings["url"])), f"{route.name}: url is a secret"


# --------------------------------------------------------------------------- what each shows


def test_plain_yaml_globs() -> None:
    dev, prod = objects("plain-yaml", "dev"), objects("plain-yaml", "prod")
    assert "Job/guestbook-smoke" in dev and "Job/guestbook-smoke" not in prod  # tests/**
    assert not any(k.startswith("Ingress/") for k in (*dev, *prod))            # *.draft.yaml
    assert prod["Deployment/guestbook"]["spec"]["replicas"] == 3


def test_kustomize_overlays() -> None:
    config = load("kustomize-overlays")
    assert {e.name: e.target["git"]["branch"] for e in config.environments.values()} == {
        "dev": "deploy/dev", "staging": "deploy/staging", "prod": "deploy/prod"}
    dev, staging, prod = (objects("kustomize-overlays", e) for e in ("dev", "staging", "prod"))
    assert "PodDisruptionBudget/podinfo" not in dev          # the component is opt-in
    assert staging["PodDisruptionBudget/podinfo"]["spec"]["minAvailable"] == 1
    assert prod["PodDisruptionBudget/podinfo"]["spec"]["minAvailable"] == 3
    assert prod["Deployment/podinfo"]["spec"]["replicas"] == 4
    for objs in (dev, staging, prod):
        generated = [k for k in objs if k.startswith("ConfigMap/podinfo-config-")]
        assert len(generated) == 1                            # configMapGenerator, hashed
        container = objs["Deployment/podinfo"]["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"][0]["configMapRef"]["name"] == generated[0].split("/")[1]
    assert "settings.json" in next(v for k, v in dev.items()
                                   if k.startswith("ConfigMap/podinfo-config-"))["data"]


def test_helm_chart_values_and_release() -> None:
    dev, prod = objects("helm-chart", "dev"), objects("helm-chart", "prod")
    image = dev["Deployment/web"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":1.5.0-rc.1")                      # inline `values`
    assert dev["Deployment/web"]["metadata"]["namespace"] == "web-dev"
    assert "HorizontalPodAutoscaler/storefront-web" in prod   # values/prod.yaml
    assert "replicas" not in prod["Deployment/storefront-web"]["spec"]
    assert prod["Ingress/storefront-web"]["metadata"]["namespace"] == "web-prod"
    assert not any(k.startswith("Pod/") for k in (*dev, *prod))  # skipTests


def test_jsonnet_ext_vars_and_tlas() -> None:
    dev, prod = objects("jsonnet", "dev"), objects("jsonnet", "prod")
    assert dev["Deployment/catalog"]["spec"]["replicas"] == 1
    assert prod["Deployment/catalog"]["spec"]["replicas"] == 4
    assert dev["ConfigMap/catalog-config"]["data"] == {
        "PUBLIC_URL": "https://catalog.dev.example.com", "DEBUG": "true",
        "FEATURES": "newSearch,recommendations"}
    assert prod["ConfigMap/catalog-config"]["data"]["DEBUG"] == "false"
    container = prod["Deployment/catalog"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":2.0.3")
    assert container["resources"]["limits"]["memory"] == "1Gi"  # sizes.yaml, size: large


def test_kubernetes_target_settings_and_waves() -> None:
    config = load("kubernetes-target")
    prod = config.environments["prod"]
    settings = kube_settings("prod", expand_all(prod.target["kubernetes"],
                                                {"KUBECONFIG_PROD": "/k/prod"}), prod.sync)
    assert (settings.kubeconfig, settings.context, settings.namespace) == \
        ("/k/prod", "prod-eu-west-1", "shop")
    assert settings.prune and settings.self_heal and settings.wait
    assert settings.wait_timeout == 300.0
    assert prod.retry.limit == 5 and prod.retry.delay(3) == 8.0
    assert not kube_settings("preview", config.environments["preview"].target["kubernetes"],
                             config.environments["preview"].sync).wait
    objs = objects("kubernetes-target", "prod")
    waves = {k: sync_wave(o) for k, o in objs.items() if k.split("/")[0] != "Namespace"}
    assert waves == {"PersistentVolumeClaim/orders-data": -2, "ConfigMap/orders-config": -2,
                     "Job/orders-migrate-3-2-0": -1, "Deployment/orders": 0,
                     "Service/orders": 0, "Ingress/orders": 1}
    assert len(plan_waves(list(objs.values()))) == 5  # bootstrap, -2, -1, 0, 1


def _event(type_: str, env: str, **data: Any) -> Event:
    sha = "0123456789abcdef0123456789abcdef01234567"
    return Event(type=type_, subject=env, id=f"{type_}-{env}", correlationid=sha,
                 data={"short": sha[:7], "message": "Bump billing", "author": "Ada",
                       "duration_ms": 4200, **data})


def test_notifications_routes() -> None:
    routes = parse_routes(load("notifications").notifiers)

    def chosen(type_: str, env: str, **data: Any) -> list[str]:
        return [r.name for r in select_routes(routes, _event(type_, env, **data))]

    assert chosen(ev.APPLY_STARTED, "prod") == ["deploys-slack", "audit-log", "github-status"]
    assert chosen(ev.APPLY_SUCCEEDED, "dev") == ["audit-log"]
    assert chosen(ev.HEALTH_PROGRESSING, "prod") == ["audit-log", "github-status"]
    assert chosen(ev.APPLY_FAILED, "dev", error="boom") == ["oncall-teams", "audit-log"]
    assert chosen(ev.DRIFT_DETECTED, "staging") == ["oncall-teams", "audit-log"]
    by_name = {r.name: r for r in routes}
    assert by_name["oncall-teams"].rate_limit is not None
    slack = by_name["deploys-slack"]
    assert providers.create("slack", expand_all(dict(slack.settings), {"SLACK_BOT_TOKEN": "x"})
                            ).updates  # a bot: one message per deployment, chat.update
    for type_ in (ev.APPLY_STARTED, ev.APPLY_SUCCEEDED, ev.HEALTH_HEALTHY):
        message = render_route(slack, _event(type_, "prod"))
        assert not message.template_error, message.template_error
        assert "*prod*" in message.text and "0123456" in message.text
    failed = render_route(slack, _event(ev.APPLY_FAILED, "prod", error="quota exceeded"))
    assert not failed.template_error and "quota exceeded" in failed.text
    assert failed.link.endswith("/#/commit/0123456789abcdef0123456789abcdef01234567")


def test_multi_source() -> None:
    config = load("multi-source")
    platform = config.sources["platform"]
    assert platform.url.startswith("https://") and platform.branch == "main"
    assert platform.interval == 120.0
    assert platform.webhook_secret == "${PLATFORM_WEBHOOK_SECRET}"
    assert platform.verify is not None and platform.verify.mode == "ssh"
    creds = load_credentials(platform.credentials, source="platform",
                             environ={"PLATFORM_GIT_TOKEN": "t0ken"})
    assert (creds.username, creds.password) == ("conveyor-bot", "t0ken")
    assert [e.name for e in config.environments.values() if e.source == "platform"] == ["addons"]
    assert "DaemonSet/node-exporter" in objects("multi-source", "addons")
