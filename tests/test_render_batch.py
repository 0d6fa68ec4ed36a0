"""Kustomize overlays rendered together in one tool run give exactly what each gives alone.

``render_many`` (orchestrator/rendering/kustomize_batch.py) is only an optimisation: these tests
render the same overlays both ways - the public kustomize inputs, each wrapped in a namespaced
overlay, and the fleet benchmark's overlays - and compare every result, count the tool runs
through a counting ``--kustomize-binary`` to show the batch was taken, and show that a broken
overlay or a conflict between overlays costs the batch but never another overlay's result nor
the broken one's precise error. The last test goes through the real renderer service.
"""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pytest

from benchmarks.fleet import overlay as fleet_overlay
from benchmarks.render import base as fleet_base
from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.errors import PermanentError
from orchestrator.rendering import (
    RenderLimits,
    RenderRequest,
    RenderResult,
    RenderTools,
    render,
    render_many,
)
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from services.renderer.service import Renderer
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

PUBLIC = Path(__file__).parent / "fixtures" / "public"
KUSTOMIZE_INPUTS = (
    "argocd-kustomize-guestbook",
    "kustomize-helloworld",
    "kustomize-wordpress",  # vars: never batched, rendered alone
    "kustomize-transformerconfigs-images",
    "flux2-kustomize-helm-example/apps/base/podinfo",
    "flux2-kustomize-helm-example/apps/staging",
    "podinfo-kustomize",
)


def counting_tool(tmp_path: Path) -> tuple[RenderTools, Path]:
    """The pinned kubectl behind a script that writes down each ``kustomize`` run."""
    calls = tmp_path / "calls"
    tool = tmp_path / "kubectl-counting"
    tool.write_text(f"#!/bin/sh\n[ \"$1\" = kustomize ] && echo run >> {calls}\n"
                    f"exec {Path(sys.executable).parent}/kubectl \"$@\"\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return RenderTools(kustomize_binary=str(tool)), calls


def runs(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def wrapped_public(root: Path) -> list[str]:
    """Each public kustomize input as the base of two namespaced overlays."""
    shutil.copytree(PUBLIC, root / "public")
    envs = []
    for i, name in enumerate(KUSTOMIZE_INPUTS):
        depth = "../" * 2
        for copy in ("a", "b"):
            env = f"wrapped/{i}{copy}"
            write(root, {f"{env}/kustomization.yaml":
                         f"namespace: batch-{i}{copy}\nresources: [{depth}public/{name}]\n"})
            envs.append(env)
    return envs


def fleet(root: Path, n: int) -> list[str]:
    write(root, fleet_base("1.0"))
    for i in range(n):
        write(root, {f"overlays/team-{i:04d}/kustomization.yaml": fleet_overlay(i)})
    return [f"overlays/team-{i:04d}" for i in range(n)]


def alone(root: Path, envs: list[str], tools: RenderTools) -> list[RenderResult | Exception]:
    out: list[RenderResult | Exception] = []
    for env in envs:
        try:
            out.append(render(root, env, tools=tools))
        except Exception as exc:
            out.append(exc)
    return out


def test_public_inputs_render_in_a_batch_as_alone(tmp_path: Path) -> None:
    tools, calls = counting_tool(tmp_path)
    root = tmp_path / "repo"
    envs = wrapped_public(root)
    solo = alone(root, envs, tools)
    assert all(isinstance(r, RenderResult) and r.manifests for r in solo)
    before = runs(calls)
    together = render_many(root, [RenderRequest(e) for e in envs], tools=tools)
    assert together == solo
    # one run for the batch, and one for each overlay of the input with vars
    assert runs(calls) - before == 1 + 2
    assert not list(root.glob(".conveyor-batch-*")), "the batch's kustomization is left behind"


def test_fleet_overlays_render_in_one_run_as_alone(tmp_path: Path) -> None:
    tools, calls = counting_tool(tmp_path)
    root = tmp_path / "repo"
    envs = fleet(root, 40)
    solo = alone(root, envs, tools)
    before = runs(calls)
    together = render_many(root, [RenderRequest(e) for e in envs], tools=tools)
    assert runs(calls) - before == 1
    assert together == solo
    assert [m.obj["metadata"]["namespace"] for m in together[7].manifests] == ["team-7"] * 2  # type: ignore[union-attr]


def test_a_broken_overlay_fails_alone_with_its_own_error(tmp_path: Path) -> None:
    tools, calls = counting_tool(tmp_path)
    root = tmp_path / "repo"
    envs = fleet(root, 6)
    # passes the pre-check (the file exists) but kustomize cannot read it
    write(root, {"overlays/team-0003/kustomization.yaml":
                 fleet_overlay(3) + "patches: [{path: bad.yaml}]\n",
                 "overlays/team-0003/bad.yaml": "kind: [\n"})
    solo = alone(root, envs, tools)
    before = runs(calls)
    together = render_many(root, [RenderRequest(e) for e in envs], tools=tools)
    # the batch failed; of its two halves, the one holding the broken overlay failed too and
    # was too small to halve again: each of its three rendered alone
    assert runs(calls) - before == 1 + 2 + 3
    broken = together[3]
    assert isinstance(broken, PermanentError) and isinstance(solo[3], PermanentError)
    assert broken.reason == "RenderFailed" and str(broken) == str(solo[3])
    assert "kustomize overlays/team-0003" in str(broken)
    assert [r for i, r in enumerate(together) if i != 3] == \
        [r for i, r in enumerate(solo) if i != 3]


def test_a_conflict_between_overlays_renders_each_alone(tmp_path: Path) -> None:
    tools, calls = counting_tool(tmp_path)
    root = tmp_path / "repo"
    envs = fleet(root, 3)
    role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n"
    for env in envs[:2]:  # the same cluster-scoped object in two overlays: fine alone
        write(root, {f"{env}/role.yaml": role, f"{env}/kustomization.yaml":
                     (root / env / "kustomization.yaml").read_text().replace(
                         "[../../base]", "[../../base, role.yaml]")})
    solo = alone(root, envs, tools)
    before = runs(calls)
    together = render_many(root, [RenderRequest(e) for e in envs], tools=tools)
    assert together == solo and all(isinstance(r, RenderResult) for r in together)
    assert runs(calls) - before == 1 + 3  # too small to halve: each alone


@pytest.mark.parametrize("field", ["vars: []", "sortOptions: {order: legacy}",
                                   "buildMetadata: [originAnnotations]"])
def test_fields_that_mean_something_else_inside_a_batch_render_alone(
        tmp_path: Path, field: str) -> None:
    tools, calls = counting_tool(tmp_path)
    root = tmp_path / "repo"
    envs = fleet(root, 3)
    write(root, {"base/kustomization.yaml":
                 (root / "base/kustomization.yaml").read_text() + field + "\n"})
    solo = alone(root, envs, tools)
    before = runs(calls)
    assert render_many(root, [RenderRequest(e) for e in envs], tools=tools) == solo
    assert runs(calls) - before == 3


async def test_renderer_batches_a_commit_and_fails_only_the_broken_overlay(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    tools, calls = counting_tool(tmp_path)
    n = 12
    files = {"conveyor.yaml": "generators:\n  - name: teams\n    directories: "
             "[{path: overlays/*}]\n    template:\n      name: \"{{path.basename}}\"\n"
             "      path: \"{{path}}\"\n", **fleet_base("1.0")}
    files.update({f"overlays/team-{i:04d}/kustomization.yaml": fleet_overlay(i)
                  for i in range(n)})
    files["overlays/team-0005/kustomization.yaml"] = fleet_overlay(5) + \
        "patches: [{path: bad.yaml}]\n"
    files["overlays/team-0005/bad.yaml"] = "kind: [\n"
    sha = repo.commit(files, "fleet")
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", interval=3600.0,
                        render_tools=tools, render_concurrency=1)
    conveyor = Conveyor(settings, names=("renderer", "git-watcher"))
    await conveyor.start()
    try:
        assert isinstance(conveyor.service("git-watcher"), GitWatcher)

        def outcomes(events: list[Event]) -> bool:
            return sum(e.type in (ev.RENDER_SUCCEEDED, ev.RENDER_FAILED)
                       and e.correlationid == sha for e in events) >= n
        events = await wait_for_events(bus, outcomes)
        renderer = conveyor.service("renderer")
        assert isinstance(renderer, Renderer) and renderer.batcher is not None
        batches = renderer.batcher.batches
    finally:
        await conveyor.stop()
    failed = [e for e in events if e.type == ev.RENDER_FAILED]
    assert [e.subject for e in failed] == ["team-0005"]
    # exactly the error the overlay gives alone, on the renderer's own snapshot
    with pytest.raises(PermanentError) as alone_error:
        render(tmp_path / "data" / "snapshots" / sha, "overlays/team-0005", tools=tools)
    assert failed[0].data["reason"] == "RenderFailed"
    assert failed[0].data["error"] == str(alone_error.value)
    assert "kustomize overlays/team-0005" in failed[0].data["error"]
    ok = {e.subject for e in events if e.type == ev.RENDER_SUCCEEDED}
    assert ok == {f"team-{i:04d}" for i in range(n)} - {"team-0005"}
    assert batches < n and runs(calls) < n  # the good overlays shared tool runs


def test_a_batch_that_times_out_renders_each_alone_without_halving(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    slow = tmp_path / "kubectl-slow"  # a batch (a path under .conveyor-batch-) never answers
    slow.write_text(f"#!/bin/sh\n[ \"$1\" = kustomize ] && echo run >> {calls}\n"
                    "case \"$*\" in *.conveyor-batch-*) exec sleep 30;; esac\n"
                    f"exec {Path(sys.executable).parent}/kubectl \"$@\"\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    tools = RenderTools(kustomize_binary=str(slow))
    root = tmp_path / "repo"
    envs = fleet(root, 8)
    limits = RenderLimits(timeout=1.0)
    solo = [render(root, e, tools=tools, limits=limits) for e in envs]
    before = runs(calls)
    assert render_many(root, [RenderRequest(e) for e in envs], tools=tools,
                       limits=limits) == solo
    assert runs(calls) - before == 1 + 8  # no halves: they would time out as well
