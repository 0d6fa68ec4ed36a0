"""A hostile repository cannot make a render read outside it, hang it, or exhaust it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ConveyorError, ManifestError, PermanentError
from orchestrator.rendering import RenderLimits, RenderTools, render
from orchestrator.rendering.safety import run_tool

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret next to the repository, and the repository root."""
    write(tmp_path, {"secret/creds.yaml": "apiVersion: v1\nkind: Secret\n"
                                          "metadata: {name: stolen}\n"})
    repo = tmp_path / "repo"
    repo.mkdir()
    return repo


def failure(root: Path, env: str, settings: dict[str, object] | None = None,
            tools: RenderTools | None = None) -> str:
    with pytest.raises(ConveyorError) as info:
        render(root, env, settings, tools=tools or RenderTools())
    assert "stolen" not in str(info.value)
    return str(info.value)


# --- plain directories -------------------------------------------------------------------------

def test_plain_symlinked_file_outside(outside: Path) -> None:
    write(outside, {"app/a.yaml": CM})
    os.symlink(outside.parent / "secret" / "creds.yaml", outside / "app" / "creds.yaml")
    message = failure(outside, "app")
    assert "app/creds.yaml: symlink points outside the repository" in message


def test_plain_symlinked_dir_outside(outside: Path) -> None:
    write(outside, {"app/a.yaml": CM})
    os.symlink(outside.parent / "secret", outside / "app" / "more")
    assert "app/more: symlink points outside the repository" in failure(outside, "app")


def test_symlink_inside_repo_is_followed(outside: Path) -> None:
    write(outside, {"shared/a.yaml": CM, "app/b.yaml": CM.replace("name: a", "name: b")})
    os.symlink("../shared", outside / "app" / "shared")
    os.symlink(".", outside / "app" / "loop")  # a loop is visited once
    result = render(outside, "app")
    assert sorted(m.source for m in result.manifests) == ["app/b.yaml:1", "app/shared/a.yaml:1"]


@pytest.mark.parametrize("env", ["../secret", "/etc", "app/../../secret"])
def test_env_path_escapes(outside: Path, env: str) -> None:
    write(outside, {"app/a.yaml": CM})
    with pytest.raises(PermanentError, match="outside the repository") as info:
        render(outside, env)
    assert info.value.reason == "PathEscape"


def test_env_path_symlink_outside(outside: Path) -> None:
    os.symlink(outside.parent / "secret", outside / "app")
    assert "is a symlink that points outside the repository" in failure(outside, "app")


def test_huge_file_is_refused(outside: Path) -> None:
    write(outside, {"app/big.yaml": CM + "---\n" + "# pad\n" * 20000})
    with pytest.raises(ManifestError) as info:
        render(outside, "app", limits=RenderLimits(max_file_bytes=64 << 10))
    assert info.value.errors == [
        f"app/big.yaml: file is {(outside / 'app/big.yaml').stat().st_size} bytes, larger than "
        "the limit of 65536 bytes; refused"]


def test_yaml_bomb_fails_fast(outside: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    write(outside, {"app/bomb.yaml": "\n".join(lines) + "\n"})
    errors = failure(outside, "app")
    assert "app/bomb.yaml:" in errors and "YAML bomb" in errors


# --- kustomize ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("resource", "expected"), [
    ("../../secret", "app/kustomization.yaml:1:13: '../../secret' points outside the repository"),
    ("/etc/passwd", "app/kustomization.yaml:1:13: '/etc/passwd' points outside the repository"),
    ("https://example.com/base.yaml", "remote bases are not allowed"),
    ("github.com/org/repo//base?ref=v1", "remote bases are not allowed"),
    ("git::https://example.com/repo.git", "remote bases are not allowed"),
])
def test_kustomize_reference_escapes(outside: Path, resource: str, expected: str) -> None:
    write(outside, {"app/kustomization.yaml": f"resources: ['{resource}']\n"})
    assert expected in failure(outside, "app")


def test_kustomize_symlinked_base_outside(outside: Path) -> None:
    write(outside, {"app/kustomization.yaml": "resources: [../base]\n"})
    write(outside.parent, {"secret/kustomization.yaml": "resources: [creds.yaml]\n"})
    os.symlink(outside.parent / "secret", outside / "base")
    assert "'../base' is a symlink that points outside the repository" in failure(outside, "app")


def test_kustomize_generator_file_symlink_outside(outside: Path) -> None:
    write(outside, {"app/kustomization.yaml":
                    "configMapGenerator:\n  - name: c\n    files: [key=creds.yaml]\n"})
    os.symlink(outside.parent / "secret" / "creds.yaml", outside / "app" / "creds.yaml")
    message = failure(outside, "app")
    assert "app/kustomization.yaml:3:13:" in message
    assert "symlink that points outside the repository" in message


def test_kustomize_unreferenced_symlink_in_read_directory(outside: Path) -> None:
    write(outside, {"app/kustomization.yaml": "resources: [a.yaml]\n", "app/a.yaml": CM})
    os.symlink(outside.parent / "secret", outside / "app" / "innocent")
    assert "app/innocent: symlink points outside the repository" in failure(outside, "app")


def test_kustomize_remote_bases_allowed_only_from_the_operators_hosts(outside: Path) -> None:
    write(outside, {"app/kustomization.yaml":
                    "resources: [a.yaml, 'https://example.invalid/x.yaml']\n", "app/a.yaml": CM})
    allowed = RenderTools(remote_base_hosts=("example.invalid",))
    message = failure(outside, "app", tools=allowed)
    assert "remote bases are not allowed" not in message  # kustomize tried, and failed
    other = failure(outside, "app", tools=RenderTools(remote_base_hosts=("github.com",)))
    assert "remote bases are not allowed from example.invalid" in other


def test_kustomize_binary_from_the_repository_is_refused(outside: Path) -> None:
    write(outside, {"app/kustomization.yaml": "resources: []\n", "bin/kustomize": "#!/bin/sh\n"})
    (outside / "bin" / "kustomize").chmod(0o755)
    tools = RenderTools(kustomize_binary=str(outside / "bin" / "kustomize"))
    assert "must not be a file of the repository" in failure(outside, "app", tools=tools)


# --- tool subprocesses -------------------------------------------------------------------------

def test_tool_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GIT_ASKPASS", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "KUBECONFIG"):
        monkeypatch.setenv(name, "leak")
    code = "import os, json; print(json.dumps({**os.environ, 'cwd': os.getcwd()}))"
    out = run_tool([sys.executable, "-c", code], cwd=tmp_path, limits=RenderLimits(),
                   what="env")
    import json
    seen = json.loads(out.stdout)
    assert seen["cwd"] == str(tmp_path)
    assert set(seen) - {"cwd", "LC_CTYPE"} == {"PATH", "HOME", "LANG"}
    assert "leak" not in out.stdout.decode()
    assert not Path(seen["HOME"]).exists()  # the throw-away home is gone


def test_tool_timeout_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        run_tool([sys.executable, "-c", "while True: pass"], cwd=tmp_path,
                 limits=RenderLimits(timeout=0.5), what="spin")
    assert info.value.reason == "RenderTimeout"
    assert "killed after 0.5s" in str(info.value)


def test_tool_memory_limit(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        run_tool([sys.executable, "-c", "x = bytearray(1 << 30)"], cwd=tmp_path,
                 limits=RenderLimits(memory_bytes=256 << 20), what="hog")
    assert info.value.reason == "RenderOutOfMemory"


def test_tool_output_is_capped(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        run_tool([sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"],
                 cwd=tmp_path, limits=RenderLimits(max_file_bytes=1024), what="flood")
    assert info.value.reason == "OutputTooLarge"


def test_kustomize_timeout_is_permanent(tmp_path: Path) -> None:
    write(tmp_path, {"app/kustomization.yaml": "resources: [a.yaml]\n", "app/a.yaml": CM})
    with pytest.raises(PermanentError) as info:
        render(tmp_path, "app", limits=RenderLimits(timeout=0.001))
    assert info.value.reason == "RenderTimeout"
