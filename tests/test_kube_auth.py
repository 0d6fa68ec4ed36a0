"""Credentials: kubeconfig parsing, TLS and mTLS, token rotation, exec plugins, basic auth,
in-cluster service accounts — and that no secret ever shows in a repr, an error or a log."""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from orchestrator.adapters.kube import KubeClient, KubeConfig, load_in_cluster, load_kubeconfig
from orchestrator.adapters.kube.auth import TokenFile
from orchestrator.errors import ConveyorError, PermanentError
from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeapi.certs import TestPKI

TOKEN = "sekret-token-0123456789"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(path: Path, server: str, user: Mapping[str, Any], *, ca: bytes | None = None,
               extra_cluster: Mapping[str, Any] | None = None) -> Path:
    cluster: dict[str, object] = {"server": server, **(extra_cluster or {})}
    if ca:
        cluster["certificate-authority-data"] = b64(ca)
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "main",
           "clusters": [{"name": "c", "cluster": cluster},
                        {"name": "elsewhere", "cluster": {"server": "https://10.0.0.1"}}],
           "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u",
                                                     "namespace": "apps"}},
                        {"name": "other", "context": {"cluster": "elsewhere", "user": "u"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def assert_hidden(secret: str, *things: object) -> None:
    for thing in things:
        assert secret not in str(thing) and secret not in repr(thing)


async def test_token_over_tls_and_nothing_secret_leaks(pki: TestPKI, tmp_path: Path) -> None:
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={TOKEN}) as fake:
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, {"token": TOKEN},
                                         ca=pki.ca_pem))
        assert cfg.namespace == "apps" and cfg.context == "main"
        with structlog.testing.capture_logs() as logs:
            async with KubeClient(cfg) as client:
                assert (await client.version())["major"] == "1"
                assert_hidden(TOKEN, cfg, client, cfg.credentials)
                fake.set_tokens("rotated-elsewhere")
                with pytest.raises(PermanentError) as err:
                    await client.get("v1", "ConfigMap", "apps", "x")
        assert err.value.reason == "Unauthorized"
        assert_hidden(TOKEN, err.value, logs, err.value.__cause__, err.value.__context__)


async def test_other_context_and_relative_file_references(pki: TestPKI, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(pki.ca_pem)
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:1",
                      {"tokenFile": "token"},
                      extra_cluster={"certificate-authority": "ca.crt",
                                     "tls-server-name": "kubernetes.default"})
    cfg = load_kubeconfig(path)
    assert cfg.ca_pem == pki.ca_pem and cfg.tls_server_name == "kubernetes.default"
    assert isinstance(cfg.credentials, TokenFile)
    assert await cfg.credentials.authorization() == f"Bearer {TOKEN}"
    assert load_kubeconfig(path, context="other").server == "https://10.0.0.1"
    with pytest.raises(PermanentError, match="no context named 'nope'"):
        load_kubeconfig(path, context="nope")


async def test_kubeconfig_env_merges_first_file_wins(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path / "a", "https://first:6443", {"token": "a"})
    second = tmp_path / "b"
    second.write_text(yaml.safe_dump({
        "current-context": "b-only", "clusters": [{"name": "c", "cluster": {
            "server": "https://second:6443"}}],
        "contexts": [{"name": "b-only", "context": {"cluster": "c"}}]}))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    cfg = load_kubeconfig()
    assert cfg.context == "main" and cfg.server == "https://first:6443"
    assert load_kubeconfig(context="b-only").server == "https://first:6443"   # cluster "c"


def test_invalid_kubeconfigs_are_permanent_errors(tmp_path: Path) -> None:
    bad: list[dict[str, Any]] = [
           {"auth-provider": {"name": "gcp"}}, {"client-certificate-data": b64(b"x")},
           {"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1alpha1"}},
           {"client-certificate-data": "!!!not base64", "client-key-data": "x"}]
    for user in bad:
        with pytest.raises(PermanentError) as err:
            load_kubeconfig(kubeconfig(tmp_path / "kc", "https://h", user))
        assert err.value.reason == "InvalidConfig"


async def test_credentials_are_not_sent_over_plain_http(tmp_path: Path) -> None:
    # like client-go: a token in the kubeconfig of an http:// server is dropped, not leaked
    async with FakeKubeAPI() as fake:   # anonymous; any Authorization header would be a 401
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, {"token": TOKEN}))
        async with KubeClient(cfg) as client:
            await client.list("v1", "Namespace")
        assert {r.user for r in fake.requests} == {"anonymous"}


async def test_mutual_tls_with_client_certificate_data(pki: TestPKI, tmp_path: Path) -> None:
    bob = pki.issue("bob")
    async with FakeKubeAPI(ssl_context=pki.server_context(require_client_cert=True)) as fake:
        user = {"client-certificate-data": b64(bob.cert_pem),
                "client-key-data": b64(bob.key_pem)}
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, user, ca=pki.ca_pem))
        assert_hidden(bob.key_pem.decode().splitlines()[1], cfg)
        async with KubeClient(cfg) as client:
            await client.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "m", "namespace": "default"}})
        assert {r.user for r in fake.requests} == {"cert:bob"}
        assert not list(Path(tempfile.gettempdir()).glob("conveyor-tls-*"))   # keys gone

        # no client certificate: the TLS handshake is refused, permanently
        anon = load_kubeconfig(kubeconfig(tmp_path / "kc2", fake.url, {}, ca=pki.ca_pem))
        async with KubeClient(anon, attempts=2) as client:
            with pytest.raises(ConveyorError):
                await client.version()


async def test_untrusted_server_certificate_is_permanent(pki: TestPKI, tmp_path: Path) -> None:
    other = TestPKI("someone-else")
    async with FakeKubeAPI(ssl_context=pki.server_context()) as fake:
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, {}, ca=other.ca_pem))
        async with KubeClient(cfg) as client:
            with pytest.raises(PermanentError) as err:
                await client.version()
        assert err.value.reason == "TLSError"
        skip = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, {},
                                          extra_cluster={"insecure-skip-tls-verify": True}))
        async with KubeClient(skip) as client:
            assert (await client.version())["major"] == "1"


async def test_basic_auth(pki: TestPKI, tmp_path: Path) -> None:
    async with FakeKubeAPI(ssl_context=pki.server_context(), basic=("admin", "pa55")) as fake:
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url,
                                         {"username": "admin", "password": "pa55"},
                                         ca=pki.ca_pem))
        assert_hidden("pa55", cfg)
        async with KubeClient(cfg) as client:
            await client.version()
        assert fake.requests[-1].user == "basic:admin"


async def test_token_file_rotation_on_schedule_and_on_401(pki: TestPKI, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1")
    now = [0.0]
    creds = TokenFile(token_file, reload_after=60, clock=lambda: now[0])
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={"token-1"}) as fake:
        cfg = KubeConfig(server=fake.url, credentials=creds, ca_pem=pki.ca_pem)
        async with KubeClient(cfg) as client:
            await client.version()
            # the kubelet rotates the token; the server accepts both for a while
            token_file.write_text("token-2")
            fake.set_tokens("token-1", "token-2")
            now[0] = 61.0
            await client.version()
            fake.set_tokens("token-2")
            assert fake.requests[-1].status == 200
            # rotated again and the old one revoked before our schedule: a 401, a re-read
            token_file.write_text("token-3")
            fake.set_tokens("token-3")
            await client.version()
        assert [r.status for r in fake.requests[-2:]] == [401, 200]


async def test_in_cluster_service_account(pki: TestPKI, tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN)
    (sa / "ca.crt").write_bytes(pki.ca_pem)
    (sa / "namespace").write_text("conveyor\n")
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={TOKEN}) as fake:
        port = fake.url.rsplit(":", 1)[1]
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        cfg = load_in_cluster(environ=env, sa_dir=sa)
        assert cfg.namespace == "conveyor" and cfg.server == fake.url
        assert_hidden(TOKEN, cfg)
        async with KubeClient(cfg) as client:
            await client.apply({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": "conveyor"}})
            out = await client.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "x"}})
        assert out["metadata"]["namespace"] == "conveyor"
    with pytest.raises(PermanentError):
        load_in_cluster(environ={}, sa_dir=sa)


def exec_plugin(tmp_path: Path, api_version: str, *, expires: str | None = None) -> Path:
    """A credential plugin: prints the token in ./current-token; logs each run and its env."""
    script = tmp_path / "plugin.py"
    status = {"token": "__TOKEN__"}
    if expires:
        status["expirationTimestamp"] = expires
    script.write_text(textwrap.dedent(f"""\
        import json, os, pathlib, sys
        here = pathlib.Path({str(tmp_path)!r})
        with open(here / "runs", "a") as fh:
            fh.write(os.environ.get("KUBERNETES_EXEC_INFO", "") + "\\n")
        if (here / "fail").exists():
            print("token expired: run `login` again", file=sys.stderr)
            sys.exit(3)
        status = {json.dumps(status)}
        status["token"] = (here / "current-token").read_text()
        print(json.dumps({{"apiVersion": {api_version!r}, "kind": "ExecCredential",
                          "status": status}}))
        """))
    return script


def runs(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "runs").read_text().splitlines()]


@pytest.mark.parametrize("api_version", ["client.authentication.k8s.io/v1",
                                         "client.authentication.k8s.io/v1beta1"])
async def test_exec_plugin_cached_then_rerun_on_401(pki: TestPKI, tmp_path: Path,
                                                    api_version: str) -> None:
    script = exec_plugin(tmp_path, api_version, expires="2999-01-01T00:00:00Z")
    (tmp_path / "current-token").write_text("exec-token-1")
    user = {"exec": {"apiVersion": api_version, "command": sys.executable,
                     "args": [str(script)], "provideClusterInfo": True,
                     "env": [{"name": "PLUGIN_SECRET", "value": "env-secret"}],
                     "interactiveMode": "Never"}}
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={"exec-token-1"}) as fake:
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, user, ca=pki.ca_pem))
        assert_hidden("env-secret", cfg)
        async with KubeClient(cfg) as client:
            await client.version()
            await client.list("v1", "Namespace")
            assert len(runs(tmp_path)) == 1                 # cached until it expires
            info = runs(tmp_path)[0]
            assert info["apiVersion"] == api_version
            assert info["spec"]["cluster"]["server"] == fake.url   # type: ignore[index]
            (tmp_path / "current-token").write_text("exec-token-2")
            fake.set_tokens("exec-token-2")
            await client.version()
            assert len(runs(tmp_path)) == 2                 # the 401 re-ran the plugin
            assert_hidden("exec-token-2", client, cfg.credentials)


async def test_exec_plugin_expiry_and_failures(pki: TestPKI, tmp_path: Path) -> None:
    api = "client.authentication.k8s.io/v1"
    script = exec_plugin(tmp_path, api, expires="2000-01-01T00:00:00Z")   # always expired
    (tmp_path / "current-token").write_text("t")
    user = {"exec": {"apiVersion": api, "command": sys.executable, "args": [str(script)]}}
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={"t"}) as fake:
        cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", fake.url, user, ca=pki.ca_pem))
        async with KubeClient(cfg) as client:
            await client.version()
            await client.version()
            assert len(runs(tmp_path)) == 2
            assert "cluster" not in runs(tmp_path)[0]["spec"]   # type: ignore[operator]
            (tmp_path / "fail").touch()
            with pytest.raises(PermanentError) as err:
                await client.version()
            assert "exited with 3" in str(err.value) and "login" in str(err.value)

    missing = {"exec": {"apiVersion": api, "command": "no-such-plugin-xyz",
                        "installHint": "install it with `brew install xyz`"}}
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", missing))
    async with KubeClient(cfg) as client:
        with pytest.raises(PermanentError, match="brew install xyz"):
            await client.version()
