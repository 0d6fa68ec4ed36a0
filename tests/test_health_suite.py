"""`conveyor health test DIR` (Argo CD's health_test.yaml) and `conveyor health -f` with rules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from conveyor.cli import build_parser
from conveyor.options import settings_from_args
from orchestrator.errors import ConveyorError
from orchestrator.resources import operator_health
from orchestrator.settings import Settings

CRS = Path(__file__).parent / "fixtures" / "health" / "crs"

SCRIPT = """\
local hs = {status = "Progressing", message = "Waiting for the widget"}
if obj.status ~= nil and obj.status.phase == "Spinning" then
  hs.status = "Healthy"
  hs.message = "Spinning at " .. obj.status.rpm .. " rpm"
elseif obj.status ~= nil and obj.status.phase == "Stuck" then
  hs.status = "Degraded"
  hs.message = obj.status.reason
end
return hs
"""


def conveyor(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command as the CLI dispatches it (not ``main``, which would point the process's
    logging at this test's captured, soon closed, stdout)."""
    args = build_parser().parse_args(list(argv))
    code = int(args.func(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def widget(phase: str | None, **status: object) -> dict[str, object]:
    obj: dict[str, object] = {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
                              "metadata": {"name": "w", "namespace": "shop"}}
    if phase is not None:
        obj["status"] = {"phase": phase, **status}
    return obj


def customization(root: Path, cases: list[tuple[str, dict[str, object], dict[str, str]]],
                  script: str = SCRIPT) -> Path:
    kind_dir = root / "widgets.example.com" / "Widget"
    (kind_dir / "testdata").mkdir(parents=True)
    (kind_dir / "health.lua").write_text(script)
    tests = []
    for name, obj, expected in cases:
        (kind_dir / "testdata" / f"{name}.yaml").write_text(yaml.safe_dump(obj))
        tests.append({"healthStatus": expected, "inputPath": f"testdata/{name}.yaml"})
    (kind_dir / "health_test.yaml").write_text(yaml.safe_dump({"tests": tests}))
    return root


GOOD = [
    ("spinning", widget("Spinning", rpm=1200), {"status": "Healthy",
                                                "message": "Spinning at 1200 rpm"}),
    ("stuck", widget("Stuck", reason="bearing seized"), {"status": "Degraded",
                                                         "message": "bearing seized"}),
    ("new", widget(None), {"status": "Progressing", "message": "Waiting for the widget"}),
]


def test_every_case_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = customization(tmp_path, GOOD)
    code, out, err = conveyor("health", "test", str(root), capsys=capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "PASS widgets.example.com/Widget testdata/spinning.yaml: Healthy (Spinning at 1200 rpm)",
        "PASS widgets.example.com/Widget testdata/stuck.yaml: Degraded (bearing seized)",
        "PASS widgets.example.com/Widget testdata/new.yaml: Progressing (Waiting for the "
        "widget)",
        "3 passed, 0 failed, 0 errors in 1 suite(s)",
    ]


def test_a_wrong_expectation_fails_with_both_verdicts(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cases = [*GOOD[:1], ("stuck", widget("Stuck", reason="bearing seized"),
                         {"status": "Degraded", "message": "bearing worn"})]
    code, out, _ = conveyor("health", "test", str(customization(tmp_path, cases)),
                            capsys=capsys)
    assert code == 1
    assert ("FAIL widgets.example.com/Widget testdata/stuck.yaml: expected Degraded (bearing "
            "worn), got Degraded (bearing seized)") in out.splitlines()
    assert out.splitlines()[-1] == "1 passed, 1 failed, 0 errors in 1 suite(s)"


def test_a_broken_script_fails_its_cases_not_the_runner(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    root = customization(tmp_path, GOOD[:1], script="while true do end")
    code, out, _ = conveyor("health", "test", str(root), capsys=capsys)
    assert code == 1
    assert "got Unknown" in out and "time limit" in out


def test_a_missing_input_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = customization(tmp_path, GOOD[:1])
    (root / "widgets.example.com/Widget/testdata/spinning.yaml").unlink()
    code, out, _ = conveyor("health", "test", str(root), capsys=capsys)
    assert code == 1
    assert "FAIL widgets.example.com/Widget testdata/spinning.yaml: cannot read" in out
    assert out.splitlines()[-1] == "0 passed, 0 failed, 1 errors in 1 suite(s)"


def test_nothing_to_run_is_a_usage_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = conveyor("health", "test", str(tmp_path), capsys=capsys)
    assert (code, out) == (2, "")
    assert "no health_test.yaml under" in err


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = conveyor("health", "test", str(customization(tmp_path, GOOD[:1])), "-o",
                            "json", capsys=capsys)
    report = json.loads(out)
    assert code == 0
    assert report["cases"][0] | {"passed": True, "input": "testdata/spinning.yaml",
                                 "actual": {"status": "Healthy",
                                            "message": "Spinning at 1200 rpm"}} \
        == report["cases"][0]
    assert report["cases"][0]["rule"].startswith("lua:")


def test_built_in_mode_measures_the_built_in_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = conveyor("health", "test", str(CRS), "--built-in", capsys=capsys)
    assert code == 0
    assert "built-in rules agree on the status of" in out.splitlines()[-1]
    assert "(100%)" in out.splitlines()[-1]


# -- conveyor health -f with user rules --------------------------------------------------------

def test_health_with_customizations_overrides_the_built_in_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = customization(tmp_path / "rules", GOOD)
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(widget("Spinning", rpm=60)))
    code, out, _ = conveyor("health", "-f", str(live), capsys=capsys)
    assert (code, out) == (0, "Widget/shop/w: n/a (no health rule)\n")
    code, out, _ = conveyor("health", "-f", str(live), "--customizations", str(root),
                            capsys=capsys)
    assert (code, out) == (0, "Widget/shop/w: Healthy (Spinning at 60 rpm)\n")
    monkeypatch.setenv("CONVEYOR_HEALTH_CUSTOMIZATIONS", str(root))
    code, out, _ = conveyor("health", "-f", str(live), "-o", "json", capsys=capsys)
    assert json.loads(out)[0]["rule"] == \
        f"lua:{root}/widgets.example.com/Widget/health.lua"


def test_health_with_an_argocd_cm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_map = tmp_path / "argocd-cm.yaml"
    config_map.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: argocd-cm}
        data:
          resource.customizations.health.widgets.example.com_Widget: |
            return {status = "Suspended", message = "from argocd-cm"}
        """))
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(widget("Spinning", rpm=60)))
    code, out, _ = conveyor("health", "-f", str(live), "--argocd-cm", str(config_map),
                            capsys=capsys)
    assert (code, out) == (0, "Widget/shop/w: Suspended (from argocd-cm)\n")


def test_an_unreadable_rule_file_is_an_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = conveyor("health", "-f", "-", "--customizations", str(tmp_path / "nope"),
                              capsys=capsys)
    assert (code, out) == (1, "")
    assert err == f"conveyor health: {tmp_path / 'nope'}: not a directory\n"


def test_health_without_a_file_says_what_is_needed(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = conveyor("health", capsys=capsys)
    assert code == 2 and "-f FILE|- is required" in err


def test_up_and_run_take_the_operators_trees(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["up", "--repo", str(tmp_path), "--health-customizations",
                                      str(tmp_path / "a"), "--health-customizations", "b"])
    assert settings_from_args(args).health_customizations == (tmp_path / "a", Path("b").resolve())
    monkeypatch.setenv("CONVEYOR_HEALTH_CUSTOMIZATIONS", str(tmp_path / "env"))
    args = build_parser().parse_args(["run", "applier", "--nats", "nats://x"])
    assert settings_from_args(args).health_customizations == (tmp_path / "env",)


def test_an_unusable_operator_tree_stops_the_start(tmp_path: Path) -> None:
    settings = Settings(nats_url="", data_dir=tmp_path,
                        health_customizations=(tmp_path / "missing",))
    with pytest.raises(ConveyorError, match=r"--health-customizations: .*not a directory"):
        operator_health(settings)


def test_health_with_a_repositorys_conveyor_yaml(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    repo = customization(tmp_path / "repo" / "health", GOOD).parent
    (repo / "conveyor.yaml").write_text(textwrap.dedent("""\
        environments:
          prod: {path: envs/prod}
        health:
          customizations: health
          checks:
            - apiVersion: gizmos.example.com/v1
              kind: Gizmo
              current: "has(status.ok) && status.ok"
        """))
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump_all([
        widget("Stuck", reason="jammed"),
        {"apiVersion": "gizmos.example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"},
         "status": {"ok": True}}]))
    code, out, _ = conveyor("health", "-f", str(live), "--config", str(repo / "conveyor.yaml"),
                            capsys=capsys)
    assert (code, out) == (0, "Widget/shop/w: Degraded (jammed)\n"
                              "Gizmo/g: Healthy (current: has(status.ok) && status.ok)\n")
    (repo / "conveyor.yaml").write_text("environments:\n  prod: {path: p}\nhealth:\n"
                                        "  customizations: nowhere\n")
    code, _, err = conveyor("health", "-f", str(live), "--config", str(repo / "conveyor.yaml"),
                            capsys=capsys)
    assert code == 1 and "health.customizations: nowhere: no such directory" in err
