"""Helm charts, rendered as ``helm template`` does.

Uses the ``helm`` binary when it is on PATH, else the ``helm-python-sdk`` wheel (Helm's Go
engine through ctypes; ``pip install 'conveyor[helm]'``), run in a boxed worker subprocess like
every tool. Neither available: a PermanentError saying how to install one.

As ``helm template``: release ``releaseName`` (default: the chart directory's name) in
``namespace`` (default "default"), installing (revision 1); hooks are kept (they are objects
the applier orders by their annotations), ``NOTES.txt`` and partials are dropped, CRDs from
``crds/`` are included unless ``skipCrds`` (Argo's default), tests unless ``skipTests``.

Values, lowest to highest: the chart's values.yaml, each of ``valueFiles`` in order (relative
to the chart, may be elsewhere in the repository), ``values``, ``valuesObject``, and the
render's ``values``; maps merge recursively, anything else is replaced (Helm's ``-f`` rule;
``null`` removes a chart default).

Refused up front: symlinks in the chart leaving the repository, value files outside it, and
dependencies that are not vendored under ``charts/`` (a render never downloads).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.domain.yamlpos import YamlSyntaxError, load_one
from orchestrator.errors import PermanentError
from orchestrator.rendering.model import RenderLimits, RenderTools
from orchestrator.rendering.parse import Located, decode, parse_yaml
from orchestrator.rendering.safety import (
    EscapeError,
    check_tree,
    display,
    join_rel,
    read_bytes,
    resolve,
    run_tool,
)
from orchestrator.rendering.settings import HelmSettings

INSTALL_HINT = ("Helm is not available: install the helm binary on PATH, or the Python SDK "
                "with `pip install helm-python-sdk` (extra `conveyor[helm]`)")


def merge_values(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's ``mergeMaps``: maps merge recursively, other values (lists, null) replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def sdk_available() -> bool:
    try:  # optional dependency: the helm extra (helm-python-sdk)
        import helm_python  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _vendored_errors(root: Path, chart_rel: str, limits: RenderLimits) -> list[str]:
    errors: list[str] = []
    for meta_name, field in (("Chart.yaml", "dependencies"), ("requirements.yaml",
                                                              "dependencies")):
        rel = f"{chart_rel}/{meta_name}" if chart_rel else meta_name
        if not (root / rel).exists():
            continue
        try:
            text, problems = decode(read_bytes(root, rel, limits), rel)
            doc = load_one(text, rel) if text is not None else None
        except (PermanentError, YamlSyntaxError) as exc:
            errors.append(str(exc))
            continue
        errors.extend(problems)
        if doc is None or not isinstance(doc.value, dict):
            continue
        deps = doc.value.get(field) or []
        if not isinstance(deps, list):
            continue
        charts = root / chart_rel / "charts"
        for i, dep in enumerate(deps):
            if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
                continue
            name = dep["name"]
            if (charts / name / "Chart.yaml").is_file() or any(charts.glob(f"{name}-*.tgz")):
                continue
            errors.append(f"{doc.where(field, i)}: chart dependency {name!r} is not vendored "
                          f"under {display(chart_rel)}/charts/ (run `helm dependency build` "
                          "and commit charts/; renders never download)")
    return errors


def _values(root: Path, chart_rel: str, settings: HelmSettings, limits: RenderLimits,
            extra: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    merged: dict[str, Any] = {}
    errors: list[str] = []
    for value_file in settings.value_files:
        rel = join_rel(chart_rel, value_file)
        where = f"render settings: helm.valueFiles {value_file!r}"
        if rel is None:
            errors.append(f"{where} points outside the repository; refused")
            continue
        try:
            text, problems = decode(read_bytes(root, rel, limits, referrer=where), rel)
            doc = load_one(text, rel) if text is not None else None
        except (PermanentError, YamlSyntaxError) as exc:
            errors.append(str(exc))
            continue
        errors.extend(problems)
        if doc is None or doc.value is None:
            continue
        if not isinstance(doc.value, dict):
            errors.append(f"{doc.start}: values file must hold a mapping")
            continue
        merged = merge_values(merged, doc.value)
    for inline in (*settings.values, extra):
        merged = merge_values(merged, inline)
    return merged, errors


def _source(chart_rel: str, template: str) -> str:
    """'web/templates/x.yaml' -> '<chart dir>/templates/x.yaml'."""
    inner = template.split("/", 1)[1] if "/" in template else template
    return f"{chart_rel}/{inner}" if chart_rel else inner


def _parse_rendered(chart_rel: str, rendered: Mapping[str, str], settings: HelmSettings
                    ) -> tuple[list[Located], list[str]]:
    items: list[Located] = []
    errors: list[str] = []
    for template in sorted(rendered):
        if template.endswith("NOTES.txt") or template.rsplit("/", 1)[-1].startswith("_"):
            continue
        text = rendered[template]
        if not text.strip():
            continue
        found, problems = parse_yaml(text, _source(chart_rel, template))
        errors.extend(problems)
        for item in found:
            hook = (item.manifest.obj.get("metadata") or {}).get("annotations") or {}
            hooks = str(hook.get("helm.sh/hook", "")) if isinstance(hook, dict) else ""
            if settings.skip_tests and any(h.strip().startswith("test")
                                           for h in hooks.split(",")):
                continue
            items.append(item)
    return items, errors


def _worker_main() -> None:
    request = json.load(sys.stdin)
    # optional dependency (the helm extra), only in the worker process that renders a chart
    import helm_python
    from helm_python import _native

    try:
        chart = helm_python.Chart.load(request["chart"])
        opts = {"name": request["name"], "namespace": request["namespace"], "revision": 1,
                "is_install": True}
        if request["kube_version"]:
            opts["kube_version"] = request["kube_version"]
        if request["api_versions"]:
            opts["api_versions"] = request["api_versions"]
        rendered = json.loads(_native.call_string("helm_render", chart._raw(),
                                                  json.dumps(request["values"]),
                                                  json.dumps(opts)))
        crds = [{"filename": c["name"], "data": c["data"]} for c in chart.crds] \
            if request["include_crds"] else []
    except helm_python.HelmError as exc:
        json.dump({"error": str(exc)}, sys.stdout)
        return
    json.dump({"rendered": rendered, "crds": crds,
               "version": f"helm {helm_python.helm_sdk_version()} (helm-python-sdk "
                          f"{helm_python.__version__})"}, sys.stdout)


def _via_binary(helm: str, chart_dir: Path, request: Mapping[str, Any], limits: RenderLimits,
                what: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conveyor-helm-") as tmp:
        values_file = Path(tmp) / "values.json"
        values_file.write_text(json.dumps(request["values"]))
        argv = [helm, "template", request["name"], str(chart_dir), "--namespace",
                request["namespace"], "-f", str(values_file)]
        if request["include_crds"]:
            argv.append("--include-crds")
        if request["kube_version"]:
            argv += ["--kube-version", request["kube_version"]]
        for api in request["api_versions"]:
            argv += ["--api-versions", api]
        out = run_tool(argv, cwd=chart_dir, limits=limits, what=what)
        version = run_tool([helm, "version", "--short"], cwd=chart_dir, limits=limits,
                           what="helm version")
    # split the stream on its '# Source: chart/path' comments to keep sources
    rendered: dict[str, str] = {}
    current = "manifest"
    for doc in out.stdout.decode(errors="replace").split("\n---"):
        for line in doc.splitlines():
            if line.startswith("# Source: "):
                current = line.removeprefix("# Source: ").strip()
                break
        rendered[current] = rendered.get(current, "") + "\n---\n" + doc
    return {"rendered": rendered, "crds": [],
            "version": f"helm {version.stdout.decode().strip()}"}


def render_helm(root: Path, env_rel: str, settings: HelmSettings, limits: RenderLimits,
                extra: Mapping[str, Any], tools: RenderTools | None = None,
                ) -> tuple[list[Located], list[str], str]:
    chart_dir = resolve(root, env_rel, referrer=f"environment path {display(env_rel)!r}")
    errors = check_tree(root, env_rel)
    errors += _vendored_errors(root, env_rel, limits)
    try:
        values, problems = _values(root, env_rel, settings, limits, extra)
    except EscapeError as exc:
        values, problems = {}, [str(exc)]
    errors += problems
    if errors:
        return [], errors, ""
    name = settings.release_name or (chart_dir.name if env_rel else "release")
    request = {"chart": str(chart_dir), "values": values, "name": name,
               "namespace": settings.namespace or "default",
               "kube_version": settings.kube_version, "api_versions": list(settings.api_versions),
               "include_crds": settings.include_crds}
    what = f"helm {display(env_rel)}"
    chosen = tools.helm_binary if tools is not None else None
    helm = shutil.which(chosen or "helm")
    if chosen and helm is None:
        raise PermanentError(f"--helm-binary {chosen!r} is not an executable file",
                             reason="ToolMissing")
    if helm is not None:
        reply = _via_binary(helm, chart_dir, request, limits, what)
    elif sdk_available():
        code = "from orchestrator.rendering.helm import _worker_main; _worker_main()"
        out = run_tool([sys.executable, "-I", "-c", code], cwd=chart_dir, limits=limits,
                       what=what, stdin=json.dumps(request).encode())
        reply = json.loads(out.stdout)
    else:
        raise PermanentError(INSTALL_HINT, reason="ToolMissing")
    if "error" in reply:
        return [], [f"{what}: {reply['error']}"], ""
    items, errors = _parse_rendered(env_rel, reply["rendered"], settings)
    for crd in reply["crds"]:
        found, problems = parse_yaml(crd["data"], _source(env_rel, "x/" + crd["filename"]))
        items.extend(found)
        errors.extend(problems)
    return items, errors, str(reply["version"])

