"""The container image is real: built from the Containerfile here, and the services run from it.

The image is built on a Debian root file system made by ``mmdebstrap`` (no registry), with
``podman build --isolation chroot`` (tests/support/image.py; reused while its inputs are
unchanged). Then the api, applier, renderer and git-watcher each run from the image's own file
system as the image's non-root ``USER``, with a read-only root, no capabilities and
``no_new_privs`` (``support.image.sandbox_argv``: kernel-enforced, since ``podman run`` cannot
run here), on the host's network against a real three-server JetStream cluster (R3), watching
a repository served by ``git daemon`` and applying to its deploy branches over git://.

Checked: every service process runs as the image's uid/gid with no capability and
``no_new_privs``, its ``/`` is mounted read-only; a write to ``/``, ``/etc`` or ``/opt/conveyor``
fails with EROFS while ``/tmp``, ``$HOME`` and the data dir take writes; and commits pushed to
the watched repository are rendered and applied (``check_branches``: each deploy branch holds
the newest commit's render, history in commit order, none twice), nothing failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import subprocess
from pathlib import Path

import aiohttp
import pytest

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from tests.support import image
from tests.support.cluster import NatsCluster
from tests.support.crash import ServiceProcess
from tests.support.gitservers import GitDaemon
from tests.support.repos import Repo
from tests.test_crash import ENVS, Quiescence, burst, check_branches, follow, initial

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("api", "applier", "renderer", "git-watcher")

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
    assert built.uid != 0 and built.gid != 0, built.user
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
        async with GitDaemon(tmp_path / "served", receive_pack=True) as daemon:
            with image.mounted(built.tag) as rootfs:
                ports = {name: free_port() for name in SERVICES}
                for name in SERVICES:
                    argv = image.sandbox_argv(
                        built, rootfs, tmp_path / "stage" / name, tmp_path / "data" / name,
                        ["conveyor", "run", name, "--nats", cluster.urls, "--replicas", "3",
                         "--repo", daemon.url("repo"), "--data-dir", built.workdir,
                         "--listen", f"127.0.0.1:{ports[name]}", "--interval", "0.3"],
                        env={"HOOK_URL": "http://127.0.0.1:9/unused",
                             "CONVEYOR_ENV_ALLOW": "HOOK_URL"})
                    services[name] = ServiceProcess(name, argv, tmp_path / f"{name}.log")
                    await services[name].start()
                for name, service in services.items():
                    assert service.proc is not None
                    pid = service.proc.pid
                    st = status(pid)
                    assert st["Uid"].split() == [str(built.uid)] * 4, (name, st["Uid"])
                    assert st["Gid"].split() == [str(built.gid)] * 4, (name, st["Gid"])
                    assert (st["CapEff"], st["CapBnd"], st["NoNewPrivs"]) == \
                        ("0" * 16, "0" * 16, "1"), name
                    assert "ro" in root_mount_options(pid), name
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{ports['api']}/readyz") as resp:
                    assert resp.status == 200, await resp.text()

                bus = await EventBus.connect(cluster.urls, name="image-test", retry_for=30)
                try:
                    # the first poll announces the head only: let it see that first
                    await follow(bus, Quiescence({(commits[0][0], e) for e in ENVS}), 90)
                    commits += await burst(repo, 6, seconds=1.0, rng=rng)
                    quiet = Quiescence({(s, e) for s, t in commits for e in t})
                    seen = await follow(bus, quiet, 120)
                    events = [e for _, e in seen]
                    failed = [(e.type, e.subject, e.data.get("error")) for e in events
                              if e.type in (ev.APPLY_FAILED, ev.APPLY_DEAD, ev.RENDER_FAILED,
                                            ev.RENDER_DEAD)]
                    assert not failed, failed[:5]
                    assert (await bus.js.stream_info(subjects.STREAM)).config.num_replicas == 3
                finally:
                    await bus.close()
                for name in SERVICES:
                    assert await services[name].terminate(timeout=15) == 0, name
        check_branches(repo, commits, tmp_path)  # the newest render on each, in order, once
        assert any((tmp_path / "data" / "git-watcher").iterdir()), "nothing in the data dir"
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate(timeout=15)
        await cluster.stop()
