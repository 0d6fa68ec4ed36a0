"""referenced_paths: what a render reads, for the git-watcher and the render cache."""

from __future__ import annotations

from pathlib import Path

from orchestrator.rendering import referenced_paths

FIXTURE = Path(__file__).parent / "fixtures" / "render" / "kustomize"


def on_disk(root: Path, env: str, settings: dict[str, object] | None = None) -> frozenset[str]:
    def read_file(path: str) -> bytes | None:
        target = root / path
        return target.read_bytes() if target.is_file() else None

    return referenced_paths(read_file, lambda p: (root / p).is_dir(), env, settings)


def in_memory(files: dict[str, str], env: str,
              settings: dict[str, object] | None = None) -> frozenset[str]:
    dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def read_file(path: str) -> bytes | None:
        text = files.get(path)
        return None if text is None else text.encode()

    return referenced_paths(read_file, lambda p: p in dirs or p == "", env, settings)


def test_kustomize_fixture() -> None:
    assert on_disk(FIXTURE, "envs/dev") == {"envs/dev", "base", "components/monitoring"}
    assert on_disk(FIXTURE, "envs/prod/") == {"envs/prod", "base"}
    assert on_disk(FIXTURE, "base") == {"base"}


def test_kustomize_files_outside_directories_remote_and_escapes() -> None:
    files = {
        "envs/dev/kustomization.yaml": (
            "resources:\n  - ../../apps/web\n  - https://example.com/x.yaml\n"
            "  - github.com/org/repo/base?ref=v1\n  - ../../../outside\n  - local.yaml\n"
            "patches:\n  - path: ../../patches/common.yaml\n  - patch: '{}'\n"
            "configMapGenerator:\n  - name: c\n    files: [k=../../data/file.txt]\n"
            "    envs: [../../data/env.txt]\n"),
        "envs/dev/local.yaml": "",
        "apps/web/kustomization.yml": "resources: [../../shared/base]\n"
                                      "components: [../../components/a]\n",
        "shared/base/Kustomization": "resources: [../extra/cm.yaml]\n",
        "shared/extra/cm.yaml": "",
        "components/a/kustomization.yaml": "resources: [../a]\n",  # a cycle is fine
        "patches/common.yaml": "", "data/file.txt": "", "data/env.txt": "",
        "unrelated/x.yaml": "",
    }
    assert in_memory(files, "envs/dev") == {
        "envs/dev", "apps/web", "shared/base", "shared/extra/cm.yaml", "components/a",
        "patches/common.yaml", "data/file.txt", "data/env.txt"}


def test_kustomize_root_env_covers_everything() -> None:
    files = {"kustomization.yaml": "resources: [app]\n", "app/kustomization.yaml": ""}
    assert in_memory(files, "") == {""}


def test_plain_and_escaping_env() -> None:
    assert in_memory({"envs/dev/a.yaml": ""}, "envs/dev") == {"envs/dev"}
    assert in_memory({"envs/dev/a.yaml": ""}, "../x") == frozenset()


def test_helm_values_files_outside_chart() -> None:
    files = {"charts/web/Chart.yaml": "name: web\n", "charts/web/values.yaml": "",
             "charts/web/values-dev.yaml": "", "envs/dev/values.yaml": ""}
    settings = {"helm": {"valueFiles": ["values-dev.yaml", "../../envs/dev/values.yaml",
                                        "../../../escape.yaml"]}}
    assert in_memory(files, "charts/web", settings) == {"charts/web", "envs/dev/values.yaml"}


def test_jsonnet_imports_recursively_with_libs() -> None:
    files = {
        "envs/dev/main.jsonnet": "local k = import 'k.libsonnet';\n"
                                 "local c = import \"../../lib/common.libsonnet\";\n"
                                 "local cfg = importstr '../../config/app.yaml';\n{}",
        "vendor/k.libsonnet": "(import 'util.libsonnet') + {}",
        "vendor/util.libsonnet": "{}",
        "lib/common.libsonnet": "import 'missing.libsonnet'",
        "config/app.yaml": "import 'not-followed.libsonnet'",
    }
    settings = {"jsonnet": {"libs": ["vendor"]}}
    assert in_memory(files, "envs/dev", settings) == {
        "envs/dev", "vendor/k.libsonnet", "vendor/util.libsonnet", "lib/common.libsonnet",
        "config/app.yaml"}


def test_invalid_settings_still_answer() -> None:
    assert in_memory({"a/x.yaml": ""}, "a", {"bogus": 1}) == {"a"}
