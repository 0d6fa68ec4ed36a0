"""Conveyor's container image, built and run here without a registry or a container engine.

``ensure_image`` builds the ``Containerfile`` the way docs/install-kubernetes.md describes for
a machine without a registry: a Debian root file system from ``mmdebstrap`` (``podman import``
makes it the ``BASE`` image), the wheels prepared on the host with ``pip wheel`` (the build
context's ``wheels/``), and ``podman build --isolation chroot``. Both images are tagged by a
content hash of their inputs (the base by its recipe; Conveyor's by the recipe, the
Containerfile and every file of the build context), so a repeated run reuses them and only a
change rebuilds; older test tags are removed.

``podman run`` does not work on these machines (crun's and runc's ``setrlimit`` of the
container's first process is refused), and ``buildah run`` has no read-only root. So
``sandbox_argv`` starts a command from the image the way a runtime would, with the kernel
enforcing the same guarantees a pod's ``securityContext`` asks for: in a new mount namespace
(and new IPC/UTS namespaces; the network namespace is the host's, as with ``--network host``),
the image's own file system (``podman image mount``: its layers, with no writable layer) is
bind-mounted read-only, with ``nosuid,nodev``; on it only ``/tmp`` (tmpfs) and, where the
caller asks, ``$HOME`` (tmpfs) and the data dir (``WorkingDir``, a host directory) are writable,
as the pod's ``emptyDir`` volumes in ``k8s/`` are; ``/proc`` is mounted and ``/dev``
holds only null, zero, full, random, urandom and tty. ``setpriv`` (from the image) then
switches to the image's ``USER`` with no supplementary groups, an empty capability bounding set
and ``no_new_privs``, and ``env -i`` gives the command exactly the image's ``Env``. The process
keeps its PID through every ``exec``, so a signal sent to it reaches the service itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The base: Debian's python3 (3.11 on bookworm, like the default python:3.11-slim) with what
# the runtime stage would otherwise install with apt (ssh-keygen and gpg verify signatures).
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "openssh-client", "gnupg", "ca-certificates")
MMDEBSTRAP = ["mmdebstrap", "--variant=apt", f"--include={','.join(BASE_PACKAGES)}",
              "--dpkgopt=path-exclude=/usr/share/man/*",
              "--dpkgopt=path-exclude=/usr/share/locale/*", SUITE]
BUILD = ("podman", "build", "--isolation", "chroot", "--layers=false")
BASE_REPO = "localhost/conveyor-test-base"
IMAGE_REPO = "localhost/conveyor-test"
CONTEXT = ("pyproject.toml", "README.md", "conveyor", "orchestrator", "services")
SKIPPED_PARTS = ("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".pyd")
TOOLS = ("podman", "mmdebstrap", "unshare", "chroot", "mount")


def unavailable() -> str | None:
    """Why the image cannot be built and run here (the test's skip reason), or None."""
    if os.geteuid() != 0:
        return "building and mounting the image needs root (podman image mount, chroot)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install podman "
                "mmdebstrap crun; .ci/run installs them)")
    for argv in (["podman", "info", "--format", "{{.Store.GraphDriverName}}"],
                 ["unshare", "--mount", "--propagation", "private", "true"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            return f"`{' '.join(argv)}` cannot run here: {done.stderr.strip()[-300:]}"
    return None


@dataclass(frozen=True)
class Image:
    """A built image: its tag and what its config says a container runs as."""

    tag: str
    user: str  # "uid:gid", numeric
    env: tuple[str, ...]
    workdir: str
    entrypoint: tuple[str, ...]
    size: int  # bytes, as podman reports it
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per step (a build)

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1]) if ":" in self.user else self.uid

    @property
    def home(self) -> str:
        return next((e.split("=", 1)[1] for e in self.env if e.startswith("HOME=")), "/")


def context_files(root: Path) -> list[Path]:
    """The files the build context holds (what .containerignore lets in, wheels aside)."""
    files: list[Path] = []
    for name in CONTEXT:
        path = root / name
        if path.is_file():
            files.append(path)
            continue
        for sub in sorted(path.rglob("*")):
            rel = sub.relative_to(root)
            if sub.is_file() and not any(p in SKIPPED_PARTS or p.endswith(".egg-info")
                                         for p in rel.parts) \
                    and not sub.name.endswith(SKIPPED_SUFFIXES):
                files.append(sub)
    return files


def digest(root: Path) -> tuple[str, str]:
    """(base recipe hash, image inputs hash): the tags of the two images."""
    base = hashlib.sha256(json.dumps(MMDEBSTRAP).encode()).hexdigest()[:16]
    h = hashlib.sha256(base.encode())
    for path in [root / "Containerfile", root / ".containerignore", *context_files(root)]:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return base, h.hexdigest()[:16]


def _run(argv: Sequence[str], log: Path, timeout: float = 600) -> float:
    """Run a build step, its output appended to ``log``; its duration in seconds."""
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise AssertionError(f"`{' '.join(argv[:4])} ...` exited {done.returncode}:\n"
                             + "\n".join(tail))
    return time.monotonic() - started


def _exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0


def _remove_other_tags(repo: str, keep: str) -> None:
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                            capture_output=True, text=True, check=False).stdout.split()
    stale = [tag for tag in listed if tag != keep]
    if stale:
        subprocess.run(["podman", "rmi", "--force", *stale], capture_output=True, check=False)


def inspect(tag: str, timings: Mapping[str, float] | None = None) -> Image:
    out = subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True,
                         check=True).stdout
    info = json.loads(out)[0]
    config = info.get("Config") or {}
    return Image(tag=tag, user=str(config.get("User") or "0"),
                 env=tuple(config.get("Env") or ()), workdir=str(config.get("WorkingDir") or "/"),
                 entrypoint=tuple(config.get("Entrypoint") or ()), size=int(info.get("Size", 0)),
                 timings=dict(timings or {}))


def ensure_image(root: Path, work: Path) -> Image:
    """Conveyor's image for the tree at ``root``: reused when its inputs are unchanged."""
    base_hash, image_hash = digest(root)
    base_tag, tag = f"{BASE_REPO}:{base_hash}", f"{IMAGE_REPO}:{image_hash}"
    if _exists(tag):
        return inspect(tag)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    timings: dict[str, float] = {}
    if not _exists(base_tag):
        tarball = work / "base.tar"
        timings["mmdebstrap"] = _run([*MMDEBSTRAP, str(tarball)], log)
        timings["podman import"] = _run(["podman", "import", str(tarball), base_tag], log)
        tarball.unlink()
        _remove_other_tags(BASE_REPO, base_tag)
    context = Path(tempfile.mkdtemp(prefix="context-", dir=work))
    for path in [root / ".containerignore", *context_files(root)]:
        target = context / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = context / "wheels"
    # the dependencies' wheels and the build backend's; Conveyor's own wheel is built in the
    # image's build stage, from the context's sources
    timings["pip wheel"] = _run([sys.executable, "-m", "pip", "wheel", "--quiet",
                                 "--disable-pip-version-check", "--wheel-dir", str(wheels),
                                 str(context), "setuptools>=69", "wheel"], log)
    for own in wheels.glob("conveyor-*.whl"):
        own.unlink()
    for leftover in ("build", "conveyor.egg-info"):
        shutil.rmtree(context / leftover, ignore_errors=True)
    timings["podman build"] = _run(
        [*BUILD, "--build-arg", f"BASE={base_tag}", "-f", str(root / "Containerfile"), "-t", tag,
         str(context)], log)
    shutil.rmtree(context)
    _remove_other_tags(IMAGE_REPO, tag)
    return inspect(tag, timings)


@contextlib.contextmanager
def mounted(tag: str) -> Iterator[Path]:
    """The image's file system (its layers, no writable layer) mounted on the host."""
    out = subprocess.run(["podman", "image", "mount", tag], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield Path(out)
    finally:
        subprocess.run(["podman", "image", "unmount", tag], capture_output=True, check=False)


# $1 image rootfs, $2 an empty staging dir, $3 the host's data dir (- for none: it stays the
# image's, read-only), $4 uid, $5 gid, $6 $HOME (a tmpfs; - for none), $7 the data dir in the
# image (WorkingDir); the rest: env -i's NAME=VALUE... then the command.
SANDBOX = r"""
set -eu
rootfs=$1 stage=$2 data=$3 uid=$4 gid=$5 home=$6 workdir=$7
shift 7
mount --bind "$rootfs" "$stage"
mount -o remount,bind,ro,nosuid,nodev "$stage"
mount -t proc -o nosuid,nodev,noexec proc "$stage/proc"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k dev "$stage/dev"
for d in null zero full random urandom tty; do
  : > "$stage/dev/$d"
  mount --bind "/dev/$d" "$stage/dev/$d"
done
ln -s /proc/self/fd "$stage/dev/fd"
ln -s fd/0 "$stage/dev/stdin"; ln -s fd/1 "$stage/dev/stdout"; ln -s fd/2 "$stage/dev/stderr"
mount -o remount,bind,ro,nosuid,noexec "$stage/dev"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=256m tmp "$stage/tmp"
if [ "$home" != - ]; then
  mount -t tmpfs -o "nosuid,nodev,mode=0700,uid=$uid,gid=$gid,size=64m" home "$stage$home"
fi
if [ "$data" != - ]; then
  mount --bind "$data" "$stage$workdir"
  mount -o remount,bind,nosuid,nodev "$stage$workdir"
fi
exec chroot "$stage" /usr/bin/setpriv --reuid="$uid" --regid="$gid" --clear-groups \
  --no-new-privs --inh-caps=-all --bounding-set=-all -- /usr/bin/env -i -C "$workdir" "$@"
"""


def sandbox_argv(image: Image, rootfs: Path, stage: Path, data: Path | None,
                 argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                 home: bool = True) -> list[str]:
    """The command line that runs ``argv`` from the mounted image (see the module docstring).

    ``stage`` is an empty directory (the root's mount point), ``data`` the host directory
    mounted on the image's ``WorkingDir`` (made the image user's, mode 0700), or None to leave
    it read-only, as ``/tmp`` alone is writable then; ``home``: a writable ``$HOME``."""
    stage.mkdir(parents=True, exist_ok=True)
    if data is not None:
        data.mkdir(parents=True, exist_ok=True)
        os.chown(data, image.uid, image.gid)
        data.chmod(0o700)
    assignments = [*image.env, *(f"{k}={v}" for k, v in (env or {}).items())]
    return ["unshare", "--mount", "--ipc", "--uts", "--propagation", "private", "--",
            "/bin/sh", "-c", SANDBOX, "sandbox", str(rootfs), str(stage),
            str(data) if data is not None else "-", str(image.uid), str(image.gid),
            image.home if home else "-", image.workdir, *assignments, *argv]
