"""Real git servers for tests: ``git daemon``, smart HTTP (``git http-backend``) and OpenSSH.

Nothing here mocks git: each server is the real program on a free loopback port, started in the
current event loop and stopped by ``async with`` (or ``await server.stop()``). Every server
returns a URL that pygit2 or the git CLI can fetch from. Readiness is awaited on the server's own
signal (a log line on stderr, or the bound socket) instead of sleeping.

- ``GitDaemon(base)``: ``git://127.0.0.1:PORT/<name>`` for every repository under ``base``
  (read-only; ``receive_pack=True`` also accepts pushes).
- ``GitHttpServer(root, users=..., tokens=...)``: ``http://127.0.0.1:PORT/<name>``; an aiohttp
  front checks HTTP basic credentials (``users``) or bearer tokens (``tokens``) and runs
  ``git http-backend`` as a CGI per request, streaming the body both ways. With ``tls=`` it
  serves HTTPS; with ``anonymous_read=True`` only pushes need credentials. A served
  repository accepts pushes when its config sets ``http.receivepack`` (``enable_push``).
- ``SshServer(authorized_keys)``: OpenSSH ``sshd`` (Debian ``openssh-server``) with a throwaway
  host key; ``url(path)`` is ``ssh://USER@127.0.0.1:PORT/abs/path`` and ``known_hosts_line`` is
  the line a client needs to trust it. Logins are by key only, as the current user (root is
  allowed with ``PermitRootLogin prohibit-password``), whose shell runs ``git-upload-pack``.

Helpers to build repositories (``init_repo``, ``commit``, ``git``) run the git CLI with an
isolated configuration (no ``~/.gitconfig``, fixed identity) so tests are reproducible.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import getpass
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

SSHD = "/usr/sbin/sshd"
_READY_TIMEOUT = 20.0


# --------------------------------------------------------------------------- git CLI helpers


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for the git CLI that ignores the user's and the system's configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Conveyor Test",
        "GIT_AUTHOR_EMAIL": "test@conveyor.invalid",
        "GIT_COMMITTER_NAME": "Conveyor Test",
        "GIT_COMMITTER_EMAIL": "test@conveyor.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    })
    env.update(extra or {})
    return env


def git(cwd: Path | str, *args: str, env: Mapping[str, str] | None = None,
        input: bytes | None = None) -> str:
    """Run ``git ARGS`` in ``cwd``; returns stdout stripped, raises with stderr on failure."""
    proc = subprocess.run(["git", *args], cwd=cwd, env=git_env(env), input=input,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def init_repo(path: Path, *, bare: bool = False, branch: str = "main") -> Path:
    """``git init`` (``--bare`` for a server-side repository); returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", f"--initial-branch={branch}", *(["--bare"] if bare else []))
    return path


def commit(work: Path, files: Mapping[str, str | None], message: str = "change",
           *, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """Write (or delete, for ``None``) ``files`` in the work tree ``work`` and commit them.

    ``args`` go to ``git commit`` (e.g. ``["-S"]``); returns the new commit id.
    """
    for name, text in files.items():
        target = work / name
        if text is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(work, "add", "-A", env=env)
    git(work, "commit", "-q", "--allow-empty", "-m", message, *args, env=env)
    return git(work, "rev-parse", "HEAD")


class Upstream:
    """A bare "server-side" repository ``<root>/<name>.git`` plus a work tree that pushes to it.

    ``push`` commits files on a branch and pushes it; ``rewrite`` replaces the branch with a
    commit that does not descend from it (a force-push); ``delete`` removes the branch.
    """

    def __init__(self, root: Path, name: str = "repo", *, branch: str = "main") -> None:
        self.root = root
        self.name = f"{name}.git"
        self.bare = init_repo(root / self.name, bare=True, branch=branch)
        self.work = init_repo(root.parent / f"{root.name}-work-{name}", branch=branch)
        self.branch = branch

    def push(self, files: Mapping[str, str | None], message: str = "change", *,
             branch: str | None = None, args: Sequence[str] = (),
             env: Mapping[str, str] | None = None) -> str:
        branch = branch or self.branch
        git(self.work, "checkout", "-q", "-B", branch)
        sha = commit(self.work, files, message, args=args, env=env)
        git(self.work, "push", "-q", "--force", str(self.bare), f"HEAD:refs/heads/{branch}")
        return sha

    def rewrite(self, files: Mapping[str, str | None], message: str = "rewritten", *,
                branch: str | None = None) -> str:
        branch = branch or self.branch
        git(self.work, "checkout", "-q", "--orphan", f"rewrite-{branch}")
        git(self.work, "rm", "-q", "-rf", "--ignore-unmatch", ".")
        sha = commit(self.work, files, message)
        git(self.work, "branch", "-q", "-M", branch)
        git(self.work, "push", "-q", "--force", str(self.bare), f"HEAD:refs/heads/{branch}")
        return sha

    def delete(self, branch: str) -> None:
        git(self.work, "push", "-q", str(self.bare), f":refs/heads/{branch}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free now; the caller binds it immediately)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url(scheme: str = "http") -> str:
    """A URL on a loopback port nothing listens on: fetching it is refused at once."""
    return f"{scheme}://127.0.0.1:{free_port()}/nothing.git"


async def _wait_for_line(stream: asyncio.StreamReader, needle: str, what: str) -> list[str]:
    """Read ``stream`` until a line containing ``needle``; raise with the log if it ends first."""
    seen: list[str] = []

    async def read() -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                raise RuntimeError(f"{what} exited before it was ready:\n" + "".join(seen))
            line = raw.decode(errors="replace")
            seen.append(line)
            if needle in line:
                return

    try:
        await asyncio.wait_for(read(), _READY_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(f"{what} not ready after {_READY_TIMEOUT}s:\n"
                           + "".join(seen)) from None
    return seen


async def _drain(stream: asyncio.StreamReader | None) -> None:
    """Keep reading a child's log so it never blocks on a full pipe."""
    if stream is None:
        return
    while await stream.readline():
        pass


class _Process:
    """A child process started by a server, with its stderr drained in the background."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def spawn(self, argv: Sequence[str], ready: str, what: str,
                    env: Mapping[str, str] | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=dict(env) if env is not None else None)
        assert self.proc.stderr is not None
        try:
            await _wait_for_line(self.proc.stderr, ready, what)
        except BaseException:
            await self.stop()
            raise
        self._drainer = asyncio.create_task(_drain(self.proc.stderr))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        self.proc = None


class _Server(abc.ABC):
    """A server that tests use as ``async with``: ``start`` on entry, ``stop`` on exit."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


# --------------------------------------------------------------------------- git://


class GitDaemon(_Server):
    """``git daemon`` serving every repository under ``base`` on git://: read-only, unless
    ``receive_pack`` (``--enable=receive-pack``: anyone may push, as git:// has no auth)."""

    def __init__(self, base: Path, *, receive_pack: bool = False) -> None:
        self.base = base
        self.receive_pack = receive_pack
        self.port = 0
        self._process = _Process()

    async def start(self) -> None:
        self.port = free_port()
        await self._process.spawn(
            ["git", "daemon", "--verbose", "--export-all", "--reuseaddr",
             "--informative-errors", *(["--enable=receive-pack"] if self.receive_pack else []),
             f"--base-path={self.base}", "--listen=127.0.0.1",
             f"--port={self.port}", str(self.base)],
            ready="Ready to rumble", what="git daemon", env=git_env())

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    async def stop(self) -> None:
        await self._process.stop()


# --------------------------------------------------------------------------- smart HTTP


class GitHttpServer(_Server):
    """Smart HTTP: aiohttp checks credentials, then runs ``git http-backend`` as a CGI.

    ``users`` maps user names to passwords (HTTP basic); ``tokens`` are accepted as
    ``Authorization: Bearer`` or as the basic password of any user. With neither, the server
    is anonymous. ``anonymous_read`` lets fetches through without credentials (a public
    repository: only pushes authenticate). ``tls`` is an ``ssl.SSLContext`` to serve HTTPS.
    ``requests`` counts the requests served (tests use it to prove a fetch did or did not
    reach the server).
    """

    def __init__(self, root: Path, *, users: Mapping[str, str] | None = None,
                 tokens: Sequence[str] = (), tls: ssl.SSLContext | None = None,
                 anonymous_read: bool = False) -> None:
        self.root = root
        self.users = dict(users or {})
        self.tokens = list(tokens)
        self.tls = tls
        self.anonymous_read = anonymous_read
        self.port = 0
        self.requests = 0
        self.remote_users: list[str] = []
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{name}"

    def _authenticate(self, header: str) -> str | None:
        """The authenticated user name, ``""`` when anonymous access is allowed, else None."""
        if not self.users and not self.tokens:
            return ""
        kind, _, value = header.partition(" ")
        if kind.lower() == "bearer" and value in self.tokens:
            return "bearer"
        if kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return None
            if self.users.get(user) == password or (password and password in self.tokens):
                return user
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        user = self._authenticate(request.headers.get("Authorization", ""))
        if user is None and self.anonymous_read and not _is_push(request):
            user = ""
        if user is None:
            return web.Response(status=401, text="authentication required",
                                headers={"WWW-Authenticate": 'Basic realm="conveyor-test"'})
        self.remote_users.append(user)
        env = git_env({
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path,
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": request.remote or "127.0.0.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        })
        if "Git-Protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                # aiohttp has already undone any Content-Encoding of the request body.
                async for chunk in request.content.iter_any():
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()

        feeder = asyncio.create_task(feed())
        try:
            status, headers = 200, {}
            while True:
                line = (await proc.stdout.readline()).decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers[name.strip()] = value.strip()
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            try:
                while chunk := await proc.stdout.read(65536):
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client hung up once it had what it needed
            return response
        finally:
            await feeder
            await proc.wait()

    @staticmethod
    def enable_push(repo: Path) -> None:
        """Let ``git http-backend`` accept pushes to the bare repository ``repo``."""
        git(repo, "config", "http.receivepack", "true")

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _is_push(request: web.Request) -> bool:
    """A smart-HTTP request of a push (``git-receive-pack``: its ref listing or its pack)."""
    return (request.path.endswith("/git-receive-pack")
            or request.query.get("service") == "git-receive-pack")


def self_signed_tls(directory: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a throwaway self-signed certificate for ``host``.

    Returns the context and the certificate file (what a client must trust). Needs the
    ``openssl`` command.
    """
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={host}", "-addext",
         f"subjectAltName=IP:{host}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


# --------------------------------------------------------------------------- SSH


def ssh_keygen(path: Path, *, passphrase: str = "", comment: str = "conveyor-test") -> Path:
    """A new ed25519 key pair at ``path`` (+ ``.pub``); returns ``path``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True, capture_output=True)
    return path


def sshd_available() -> str | None:
    """None when an SSH server can be started here, else the reason it cannot."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install -y openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install -y openssh-client)"
    return None


class SshServer(_Server):
    """OpenSSH sshd on a loopback port, key logins only, for the current user.

    ``authorized_keys`` are public key lines (``ssh-ed25519 AAAA... comment``).
    """

    def __init__(self, authorized_keys: Sequence[str], *, workdir: Path | None = None) -> None:
        self.authorized_keys = list(authorized_keys)
        self.user = getpass.getuser()
        self.port = 0
        self.host_public_key = ""
        self._workdir = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process = _Process()

    @property
    def known_hosts_line(self) -> str:
        """The known_hosts line that trusts this server (``[127.0.0.1]:PORT type key``)."""
        return f"[127.0.0.1]:{self.port} {self.host_public_key}"

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{Path(path).resolve()}"

    async def start(self) -> None:
        reason = sshd_available()
        if reason is not None:
            raise RuntimeError(reason)
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="conveyor-sshd-")
            self._workdir = Path(self._tmp.name)
        work = self._workdir
        work.mkdir(parents=True, exist_ok=True)
        host_key = work / "ssh_host_ed25519_key"
        if not host_key.exists():
            ssh_keygen(host_key, comment="conveyor-test-host")
        parts = host_key.with_suffix(".pub").read_text().split()
        self.host_public_key = f"{parts[0]} {parts[1]}"
        (work / "authorized_keys").write_text("".join(k.strip() + "\n"
                                                      for k in self.authorized_keys))
        self.port = free_port()
        config = work / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {work / 'sshd.pid'}",
            f"AuthorizedKeysFile {work / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "PermitUserEnvironment no",
            "LogLevel VERBOSE",
            "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        await self._process.spawn([SSHD, "-D", "-e", "-f", str(config)],
                                  ready="Server listening on", what="sshd")

    async def stop(self) -> None:
        await self._process.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._workdir = None
