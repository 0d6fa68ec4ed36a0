"""Confinement: a render reads only inside the repository snapshot, and tools run boxed in.

A repository is untrusted input. Everything a render reads goes through ``resolve`` (or a
caller that checked the path with it), which refuses absolute paths, ``..`` escapes and
symlinks - to files or directories - whose target lies outside ``root``. The snapshot is an
export that nothing else writes to while a render runs, so checking before a tool reads is
enough (no time-of-check/time-of-use race with a writer).

Tool subprocesses (kustomize, the jsonnet and helm workers) run with:

- no network, unless the operator allowed remote bases: a network namespace of its own
  (``offline_prefix``; where the host refuses user namespaces, a warning at start-up and
  only the reference checks);
- a scrubbed environment: only ``PATH`` and ``HOME`` (a fresh temporary directory), so
  ``GIT_*``, ``AWS_*``, ``*_TOKEN``, ``KUBECONFIG`` and friends never reach them;
- ``RLIMIT_AS`` (address space) and no core dumps, set by util-linux's ``prlimit`` in front of
  the tool (``limit_prefix``), else in ``preexec_fn`` (the function only calls the
  already-imported ``resource.setrlimit``, which is safe after fork in a threaded process).
  ``prlimit`` first: a ``preexec_fn`` forces a full ``fork`` of this process, holding the GIL
  (about 7 ms for a 150 MB process here, against 0.6 ms for the ``vfork`` Python uses
  without it);
- a wall-clock timeout, after which the whole process group is killed; a render that timed
  out will time out again, so that is a ``PermanentError`` (reason ``RenderTimeout``);
- a cap on the bytes read from stdout, so a tool cannot exhaust the caller's memory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import PermanentError
from orchestrator.rendering.model import OUTPUT_FACTOR, RenderLimits


class EscapeError(PermanentError):
    """A path of the repository points outside it (``..``, absolute path or symlink)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="PathEscape")


def norm_rel(rel: str) -> str | None:
    """Normalise a repo-relative posix path; None when it is absolute or escapes the root."""
    if rel.startswith("/") or rel.startswith("\\") or (len(rel) > 1 and rel[1] == ":"):
        return None
    norm = posixpath.normpath(rel.replace("\\", "/")) if rel else "."
    if norm == ".." or norm.startswith("../"):
        return None
    return "" if norm == "." else norm


def join_rel(base: str, ref: str) -> str | None:
    """``ref`` as written in a file of directory ``base``, as a repo-relative path (or None)."""
    if ref.startswith("/"):
        return None
    return norm_rel(posixpath.join(base, ref) if base else ref)


def display(rel: str) -> str:
    return rel or "."


def resolve(root: Path, rel: str, *, referrer: str, shown: str | None = None) -> Path:
    """The real path of repo-relative ``rel``, refusing anything that lands outside ``root``.

    ``referrer`` names who asked (``"envs/dev/kustomization.yaml:4:3"``) and ``shown`` how the
    path was written there, for the message.
    """
    norm = norm_rel(rel)
    shown = rel if shown is None else shown
    if norm is None:
        raise EscapeError(f"{referrer}: {shown!r} points outside the repository "
                          "(absolute paths and '..' escapes are refused)")
    real_root = root.resolve()
    target = (real_root / norm).resolve()
    if not target.is_relative_to(real_root):
        raise EscapeError(f"{referrer}: {shown!r} is a symlink that points outside the "
                          "repository; refused")
    return target


def check_tree(root: Path, rel: str) -> list[str]:
    """Every symlink under directory ``rel`` whose target escapes ``root``, as error lines.

    Tools such as kustomize read whole directories; a symlink anywhere below one they read
    could leak a file of the host, so any such symlink refuses the render.
    """
    real_root = root.resolve()
    errors: list[str] = []
    start = real_root / rel if rel else real_root
    if start.is_symlink() or not start.is_dir():
        return errors
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    errors.append(f"{path.relative_to(real_root).as_posix()}: symlink points "
                                  "outside the repository; refused")
    return errors


def read_bytes(root: Path, rel: str, limits: RenderLimits, *, referrer: str | None = None) -> bytes:
    """Read a regular file inside ``root``, refusing escapes and files over the size limit."""
    path = resolve(root, rel, referrer=referrer or rel)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PermanentError(f"{referrer or rel}: file {rel!r} does not exist",
                             reason="FileNotFound") from None
    if not stat.S_ISREG(info.st_mode):
        raise PermanentError(f"{referrer or rel}: {rel!r} is not a regular file",
                             reason="NotAFile")
    check_size(rel, info.st_size, limits)
    with path.open("rb") as handle:
        data = handle.read(limits.max_file_bytes + 1)
    check_size(rel, len(data), limits)
    return data


def check_size(rel: str, size: int, limits: RenderLimits) -> None:
    if size > limits.max_file_bytes:
        raise PermanentError(f"{rel}: file is {size} bytes, larger than the limit of "
                             f"{limits.max_file_bytes} bytes; refused", reason="FileTooLarge")


# --- tool subprocesses ----------------------------------------------------------------------

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class ToolOutput:
    stdout: bytes
    stderr: str


def scrubbed_env(home: str, path: str | None = None) -> dict[str, str]:
    """The whole environment a tool sees: PATH and a throw-away HOME, nothing else."""
    return {"PATH": path if path is not None else os.environ.get("PATH", DEFAULT_PATH),
            "HOME": home, "LANG": "C.UTF-8"}


def _limit(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@functools.cache
def offline_prefix() -> tuple[str, ...]:
    """The argv prefix that runs a tool with no network: a fresh network namespace (only a
    loopback, down) entered through an unprivileged user namespace. ``()`` where the host
    refuses those (many container runtimes do): then only ``precheck``'s refusal of remote
    references stands between a render and the network. Checked once per process."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--net", "--map-root-user", "--")
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", ""], capture_output=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if done.returncode == 0 else ()


@functools.cache
def prlimit_binary() -> str | None:
    """util-linux's ``prlimit``, when installed (looked up once per process)."""
    return shutil.which("prlimit")


def limit_prefix(memory_bytes: int) -> tuple[str, ...]:
    """The argv prefix that sets the tool's limits, or ``()``: ``run_tool`` then sets them in
    a ``preexec_fn``."""
    prlimit = prlimit_binary()
    if prlimit is None:
        return ()
    return (prlimit, f"--as={memory_bytes}", "--core=0", "--")


def run_tool(argv: Sequence[str], *, cwd: Path, limits: RenderLimits, what: str,
             stdin: bytes = b"", extra_env: Mapping[str, str] | None = None) -> ToolOutput:
    """Run a tool boxed in; returns its output or raises PermanentError saying what failed.

    A non-zero exit is a PermanentError carrying the tool's stderr (the tool's own words are
    the most useful message: "accumulating resources: ... no such file").
    """
    memory = limits.memory_bytes
    max_out = OUTPUT_FACTOR * limits.max_file_bytes
    with tempfile.TemporaryDirectory(prefix="conveyor-render-home-") as home:
        env = scrubbed_env(home)
        env.update(extra_env or {})
        boxed = list(argv) if limits.network else [*offline_prefix(), *argv]
        prefix = limit_prefix(memory)
        if prefix and shutil.which(argv[0], path=env["PATH"]) is None:
            # said as when Popen itself cannot start it (prlimit would only exit non-zero)
            raise PermanentError(f"{what}: cannot start {argv[0]}: No such file or directory",
                                 reason="ToolMissing")
        try:
            proc = subprocess.Popen(
                [*prefix, *boxed], cwd=cwd, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                close_fds=True, preexec_fn=None if prefix else (lambda: _limit(memory)),
            )
        except OSError as exc:
            raise PermanentError(f"{what}: cannot start {argv[0]}: {exc.strerror}",
                                 reason="ToolMissing") from None
        out, err, problem = _communicate(proc, stdin, limits.timeout, max_out)
    stderr = err.decode(errors="replace").strip()
    if problem == "timeout":
        raise PermanentError(f"{what}: killed after {limits.timeout:g}s (render timeout); a "
                             "render that timed out will time out again, so this is not "
                             "retried", reason="RenderTimeout")
    if problem == "output":
        raise PermanentError(f"{what}: output larger than {max_out} bytes; refused",
                             reason="OutputTooLarge")
    if proc.returncode != 0:
        lowered = stderr.lower()
        if (proc.returncode < 0 and -proc.returncode == signal.SIGKILL) or \
                any(sign in lowered for sign in _OOM_SIGNS):
            raise PermanentError(f"{what}: ran out of memory (limit {memory} bytes): "
                                 f"{_tail(stderr)}", reason="RenderOutOfMemory")
        raise PermanentError(f"{what}: {_tail(stderr) or f'exit status {proc.returncode}'}",
                             reason="RenderFailed")
    return ToolOutput(out, stderr)


_OOM_SIGNS = ("out of memory", "cannot allocate memory", "memoryerror", "memory allocation",
              "bad_alloc")


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes, timeout: float,
                 max_out: int) -> tuple[bytes, bytes, str | None]:
    """Feed stdin, collect stdout (capped) and stderr (capped) until exit or deadline."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    err: list[bytes] = []
    out_size = err_size = 0
    problem: str | None = None
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as sel:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = "timeout"
                break
            for key, _ in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        written = os.write(proc.stdin.fileno(), pending[:65536])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                fileobj = proc.stdout if key.fileobj is proc.stdout else proc.stderr
                chunk = os.read(fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(fileobj)
                    continue
                if fileobj is proc.stdout:
                    out_size += len(chunk)
                    if out_size > max_out:
                        problem = "output"
                        break
                    out.append(chunk)
                elif err_size < 1 << 20:
                    err_size += len(chunk)
                    err.append(chunk)
            if problem:
                break
    if problem:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if not stream.closed:
            stream.close()
    remaining = max(0.1, deadline - time.monotonic()) if not problem else 5.0
    try:
        proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        problem = problem or "timeout"
    # Whatever the tool left behind in its session (a daemonised child) dies with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return b"".join(out), b"".join(err), problem
