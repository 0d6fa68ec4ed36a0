"""The layers in pyproject.toml hold on the real tree, and one forbidden import breaks them.

The packages are copied to a temporary directory with pyproject.toml and lint-imports runs
there, so the check is the one ``make lint`` runs and nothing in the real tree is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conveyor", "orchestrator", "services", "tests")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def copy_tree(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static",
                                                      "fixtures", "screenshots"))
    return dest


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_tree(tmp_path_factory.mktemp("layers"))


def test_the_real_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("orchestrator/domain/probe.py", "import services.api.app\n",
     "The domain is pure"),
    ("orchestrator/domain/probe.py", "import orchestrator.adapters.nats_bus\n",
     "The domain is pure"),
    ("orchestrator/rendering/probe.py", "import orchestrator.targets.kube.target\n",
     "Layers"),
    ("services/renderer/probe.py", "import services.applier.service\n",
     "No service imports another service"),
    ("orchestrator/probe.py", "import tests.support.waits\n",
     "The product never imports test support"),
])
def test_one_forbidden_import_breaks_a_contract(copied: Path, module: str, line: str,
                                                contract: str) -> None:
    probe = copied / module
    probe.write_text(f'"""A forbidden import, written by tests/test_architecture.py."""\n{line}')
    try:
        result = lint(copied)
    finally:
        probe.unlink()
    assert result.returncode != 0, result.stdout
    said = " ".join(result.stdout.split())   # a long contract name wraps over lines
    assert re.search(re.escape(contract) + r"(?:(?! KEPT).){0,200}? BROKEN", said), result.stdout


def test_the_architecture_doc_names_every_layer() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in contracts["contracts"] if c["type"] == "layers")
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for layer in layers:
        for module in layer.split("|"):
            name = module.strip().removeprefix("orchestrator.")
            assert name in doc, f"docs/architecture.md does not show the layer {module.strip()}"
