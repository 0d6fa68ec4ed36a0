"""The container image is real: built from the Containerfile here, and the services run from it.

The image is built on a Debian root file system made by ``mmdebstrap`` (no registry), with
``podman build --isolation chroot`` (tests/support/image.py; reused while its inputs are
unchanged). Then all five services each run from the image's own file system as the image's
non-root ``USER``, with a read-only root, no capabilities and ``no_new_privs``
(``support.image.sandbox_argv``: kernel-enforced, since ``podman run`` cannot run here), on
the host's network against a real three-server JetStream cluster (R3), watching a repository
served by ``git daemon`` and applying to its deploy branches over git://. What is writable is
what their ``k8s/`` Deployments mount: ``/tmp`` for all, plus the data dir and ``$HOME`` for
the git-watcher, renderer and applier.

Checked: every service process runs as the image's uid/gid with no supplementary group, no
capability and ``no_new_privs``, and its ``/`` is mounted read-only; a write to ``/``, ``/etc``
or ``/opt/conveyor`` fails with EROFS while ``/tmp``, ``$HOME`` and the data dir take writes;
every service answers ``/readyz``; and pushed commits are rendered and applied
(``test_crash.verify``: every pair once, none failed, each deploy branch holds the newest
commit's render in commit order, every notification reached the webhook, replay equal).
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import shlex
import subprocess
from pathlib import Path

import aiohttp
import pytest

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.adapters.nats_schema import kv_stream
from tests.support import image
from tests.support.cluster import NatsCluster
from tests.support.crash import ServiceProcess
from tests.support.gitservers import GitDaemon
from tests.support.repos import Repo
from tests.test_crash import ENVS, Quiescence, burst, follow, hook_env, initial, verify, webhook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("api", "applier", "renderer", "git-watcher", "notifier")
# the services whose k8s/ Deployment mounts a data dir and $HOME; the others have /tmp only
STATEFUL = frozenset({"applier", "renderer", "git-watcher"})

# Run inside the sandbox as the image's user: which paths take a write, and the errno of those
# that refuse one.
PROBE = """
import json, os, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
for path in sys.argv[1:]:
    try:
        with open(os.path.join(path, ".probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".probe"))
        out[path] = 0
    except OSError as exc:
        out[path] = exc.errno
print(json.dumps(out))
"""


def documented_build() -> list[list[str]]:
    """The commands of docs/install-kubernetes.md's "Building without a registry"."""
    text = (ROOT / "docs" / "install-kubernetes.md").read_text()
    section = text.split("### Building without a registry", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        for command in line.split("&&"):
            commands.append(shlex.split(command))
    return commands


def test_the_documented_build_is_the_tested_one() -> None:
    commands = {c[0] if c[0] != "podman" else f"podman {c[1]}": c for c in documented_build()}
    assert commands["mmdebstrap"] == [*image.MMDEBSTRAP, "base.tar"]
    base = commands["podman import"][3]
    assert commands["python3"][3:] == ["wheel", "--wheel-dir", "wheels", ".", "setuptools>=69",
                                       "wheel"]
    build = commands["podman build"]
    assert build[:7] == [*image.BUILD, "--build-arg", f"BASE={base}"], build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> image.Image:
    reason = image.unavailable()
    if reason:
        pytest.skip(reason)
    built = image.ensure_image(ROOT, tmp_path_factory.mktemp("image-build"))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in built.timings.items()) or "cached"
    print(f"\nimage {built.tag}: {built.size / 1e6:.0f} MB, user {built.user} ({steps})")
    return built


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def root_mount_options(pid: int) -> list[str]:
    """The mount options of ``pid``'s ``/`` (from its own mountinfo)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no / in /proc/{pid}/mountinfo")


def test_the_image_is_unprivileged_and_its_root_read_only(built: image.Image,
                                                          tmp_path: Path) -> None:
    # what docs/install-kubernetes.md says and k8s/'s runAsUser, volumes and mounts assume
    assert (built.user, built.workdir, built.home) == \
        ("10001:10001", "/var/lib/conveyor", "/home/conveyor")
    assert built.entrypoint == ("conveyor",)
    writable = ["/tmp", built.home, built.workdir]
    refused = ["/", "/etc", "/opt/conveyor", "/opt/conveyor/bin", "/usr/local", "/var/tmp"]
    with image.mounted(built.tag) as rootfs:
        argv = image.sandbox_argv(built, rootfs, tmp_path / "stage", tmp_path / "data",
                                  ["python3", "-c", PROBE, *writable, *refused])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (built.uid, built.gid, [])
    assert {p: seen[p] for p in writable} == dict.fromkeys(writable, 0)
    assert {p: seen[p] for p in refused} == dict.fromkeys(refused, errno.EROFS)


async def test_services_from_the_image_apply_commits_on_the_cluster(
        built: image.Image, tmp_path: Path) -> None:
    rng = random.Random(1313)
    repo = Repo(tmp_path / "served" / "repo")
    commits = initial(repo)
    cluster = NatsCluster(tmp_path / "cluster")
    await cluster.start()
    services: dict[str, ServiceProcess] = {}
    try:
        async with GitDaemon(tmp_path / "served", receive_pack=True) as daemon, \
                webhook() as receiver:
            with image.mounted(built.tag) as rootfs:
                ports = {name: free_port() for name in SERVICES}
                for name in SERVICES:
                    stateful = name in STATEFUL  # as in k8s/: data dir and $HOME volumes
                    argv = image.sandbox_argv(
                        built, rootfs, tmp_path / "stage" / name,
                        tmp_path / "data" / name if stateful else None,
                        ["conveyor", "run", name, "--nats", cluster.urls, "--replicas", "3",
                         "--repo", daemon.url("repo"),
                         *(["--data-dir", built.workdir] if stateful else []),
                         "--listen", f"127.0.0.1:{ports[name]}", "--interval", "0.3"],
                        env=hook_env(receiver.url), home=stateful)
                    services[name] = ServiceProcess(name, argv, tmp_path / f"{name}.log")
                    await services[name].start()
                for name, service in services.items():
                    assert service.proc is not None
                    pid = service.proc.pid
                    st = status(pid)
                    assert st["Uid"].split() == [str(built.uid)] * 4, (name, st["Uid"])
                    assert st["Gid"].split() == [str(built.gid)] * 4, (name, st["Gid"])
                    assert (st["Groups"], st["CapEff"], st["CapBnd"], st["NoNewPrivs"]) == \
                        ("", "0" * 16, "0" * 16, "1"), name
                    assert "ro" in root_mount_options(pid), name
                async with aiohttp.ClientSession() as http:
                    for name in SERVICES:
                        url = f"http://127.0.0.1:{ports[name]}/readyz"
                        async with http.get(url) as resp:
                            assert resp.status == 200, (name, await resp.text())

                bus = await EventBus.connect(cluster.urls, name="image-test", retry_for=30)
                try:
                    for name in (subjects.STREAM, kv_stream(subjects.STATE_BUCKET)):
                        assert (await bus.js.stream_info(name)).config.num_replicas == 3, name
                    # the first poll announces the head only: let it see that first
                    await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 90)
                    commits += await burst(repo, 6, seconds=1.0, rng=rng)
                    # every pair once, none failed, the branches right, every notification
                    # POSTed once, and the projection equal to the log's fold
                    counts = await verify(bus, repo, commits, receiver, [], [], tmp_path,
                                          "image")
                    assert counts["applied"] >= len(ENVS), counts
                finally:
                    await bus.close()
                for name in SERVICES:
                    assert await services[name].terminate(timeout=15) == 0, name
        assert any((tmp_path / "data" / "git-watcher").iterdir()), "nothing in the data dir"
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate(timeout=15)
        await cluster.stop()
