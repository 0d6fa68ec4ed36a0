"""Programs and network reach are the operator's: conveyor.yaml naming one is config.invalid.

The attack (finding 1 of the review): ``render.kustomize.binary: sh`` made the renderer run
repository files (``sh version``), which read the process environment. Now the key is refused
at the commit with the key and why, the last good config stays in force, nothing of the
repository runs, and the operator's ``--kustomize-binary`` / ``--helm-binary`` /
``--allow-remote-bases`` are the only way to choose them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.cli import build_parser
from conveyor.options import settings_from_args
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.rendering import RenderTools
from services.git_watcher.config_check import check_config
from tests.security.pipeline import CONFIG, finished, good_files, next_good_commit_deploys, of, poll
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


def config_with(render: str) -> str:
    return f"environments:\n  app:\n    path: app\n    render:\n{render}"


@pytest.mark.parametrize(("render", "key", "flag", "line"), [
    ("      kustomize:\n        binary: sh\n", "kustomize.binary", "--kustomize-binary", 6),
    ("      kustomize: {allowRemoteBases: true}\n", "kustomize.allowRemoteBases",
     "--allow-remote-bases", 5),
    ("      type: helm\n      helm:\n        binary: /tmp/x\n", "helm.binary", "--helm-binary",
     7),
])
def test_operator_keys_in_conveyor_yaml_are_refused(render: str, key: str, flag: str,
                                                    line: int) -> None:
    with pytest.raises(ConfigError) as info:
        check_config(parse_config(config_with(render)))
    err = info.value
    assert err.field == f"environments.app.render.{key}"
    assert err.line == line
    assert flag in str(err) and "operator configuration" in str(err)


def test_the_operator_chooses_them_with_flags() -> None:
    args = build_parser().parse_args([
        "up", "--repo", "https://git.example/r.git", "--kustomize-binary", "/opt/kustomize",
        "--helm-binary", "/opt/helm", "--allow-remote-bases", "github.com,gitlab.com",
        "--allow-remote-bases", "git.example"])
    assert settings_from_args(args).render_tools == RenderTools(
        kustomize_binary="/opt/kustomize", helm_binary="/opt/helm",
        remote_base_hosts=("github.com", "gitlab.com", "git.example"))
    default = settings_from_args(build_parser().parse_args(["up", "--repo", "https://git.example/r"]))
    assert default.render_tools == RenderTools()


async def test_binary_sh_never_runs_repository_files(repo: Repo, nats_server: EmbeddedNats,
                                                     bus: EventBus, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({
            "conveyor.yaml": config_with("      type: kustomize\n      kustomize:\n"
                                         "        binary: sh\n"),
            "version": f"touch {marker}\nenv > {marker}\n",
            "build": f"touch {marker}\n",
            "app/kustomization.yaml": "resources: [cm.yaml]\n",
        }, "run my script as the kustomize binary")
        await poll(conveyor)
        events = await wait_for_events(
            bus, lambda evs: ev.CONFIG_INVALID in of(evs, attack)
            and finished(attack, {"app"})(evs))
        invalid = next(e for e in events if e.type == ev.CONFIG_INVALID)
        assert invalid.data["field"] == "environments.app.render.kustomize.binary"
        assert "--kustomize-binary" in invalid.data["error"]
        assert not marker.exists(), "a repository file ran as the render tool"
        await next_good_commit_deploys(conveyor, bus, repo, config=CONFIG)
    assert not marker.exists()
