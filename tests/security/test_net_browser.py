"""Medium findings on browsers: any Host header was accepted (DNS rebinding) and a tokenless
loopback instance accepted cross-origin POSTs. Now: a Host allowlist (421), cross-site writes
refused (403) with or without a token, and security headers on every answer."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from conveyor.demo import demo_files
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from services.api.browser import HostAllowlist, host_name
from services.api.routes_dashboard import STATIC_DIR
from tests.security.net_support import OPERATOR, api_url, applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


async def answer(http: aiohttp.ClientSession, method: str, url: str,
                 **headers: str) -> tuple[int, dict[str, str]]:
    async with http.request(method, url, headers=headers) as resp:
        return resp.status, dict(resp.headers)


async def refreshes(bus: EventBus) -> int:
    return len([s async for s in bus.read(subjects.filter_for(ev.REFRESH_REQUESTED))])


async def test_dns_rebinding_and_cross_site_posts_fail_on_a_tokenless_loopback_api(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data",
                            allowed_hosts=("conveyor.example.com", ".corp.example"))
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        port = url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as http:
            # a rebound name reaches us with its own Host: refused, reads and writes alike
            for path in ("/", "/api/v1/environments", "/api/v1/events", "/static/app.js"):
                status, _ = await answer(http, "GET", url + path, Host=f"evil.example:{port}")
                assert status == 421, path
            status, _ = await answer(http, "POST", url + "/api/v1/refresh",
                                     Host=f"rebind.evil.example:{port}")
            assert status == 421
            # probes answer whatever the Host (kubelet sends the pod IP)
            assert (await answer(http, "GET", url + "/healthz", Host="evil.example"))[0] == 200
            # loopback names, the operator's names and subdomains, and our own IP answer
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "conveyor.example.com",
                         "corp.example", "ci.corp.example", "CONVEYOR.example.com.",
                         f"[::1]:{port}"):
                status, _ = await answer(http, "GET", url + "/api/v1/environments", Host=host)
                assert status == 200, host
            assert (await answer(http, "GET", url + "/api/v1/environments",
                                 Host="notcorp.example"))[0] == 421
            before = await refreshes(bus)
            # a page on another site posting to the loopback api: 403 without any token
            for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                            {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                            {"Origin": f"http://127.0.0.1:{int(port) + 1}"}):
                for path in ("/api/v1/refresh", "/api/v1/environments/dev/sync",
                             "/api/v1/replay"):
                    status, _ = await answer(http, "POST", url + path, **headers)
                    assert status == 403, (path, headers)
            assert await refreshes(bus) == before  # nothing was published
            # the same origin (the dashboard itself) and non-browsers still act
            status, _ = await answer(http, "POST", url + "/api/v1/refresh",
                                     Origin=url, **{"Sec-Fetch-Site": "same-origin"})
            assert status == 202
            assert (await answer(http, "POST", url + "/api/v1/refresh"))[0] == 202
            # a cross-site GET is not refused here: the browser keeps its answer from the page
            assert (await answer(http, "GET", url + "/api/v1/environments",
                                 Origin="http://evil.example"))[0] == 200
        await deploys_next_commit(conveyor, repo, bus)


async def test_every_answer_carries_the_security_headers(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=OPERATOR)
    async with running(settings) as conveyor:
        await wait_for_events(bus, applied(first))
        url = api_url(conveyor)
        async with aiohttp.ClientSession() as http:
            for method, path, expected in (
                    ("GET", "/", 200), ("GET", "/static/app.js", 200),
                    ("GET", "/api/v1/environments", 401), ("GET", "/healthz", 200),
                    ("POST", "/api/v1/refresh", 401), ("GET", "/nope", 401)):
                status, headers = await answer(http, method, url + path)
                assert status == expected, path
                csp = headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in csp, path
                assert headers["X-Content-Type-Options"] == "nosniff", path
                assert headers["Referrer-Policy"] == "no-referrer", path
                assert headers["X-Frame-Options"] == "DENY", path
            _, page = await answer(http, "GET", url + "/")
            assert "script-src 'self'" in page["Content-Security-Policy"]
            assert "'unsafe-inline'" not in page["Content-Security-Policy"]
            _, api = await answer(http, "GET", url + "/api/v1/environments",
                                  Authorization=f"Bearer {OPERATOR}")
            assert api["Content-Security-Policy"].startswith("default-src 'none'")
            assert api["Cache-Control"] == "no-store"
        await deploys_next_commit(conveyor, repo, bus)


class _Inline(HTMLParser):
    """What the dashboard's CSP (no 'unsafe-inline') would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {k}=" for k in names if k == "style" or k.startswith("on")]
        self.found += [f"{tag} {k}=javascript:" for k, v in attrs
                       if v and v.strip().lower().startswith("javascript:")]


def test_the_dashboard_has_nothing_inline_that_the_csp_would_block() -> None:
    parser = _Inline()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.found == []
    script = (STATIC_DIR / "app.js").read_text()
    for banned in ("innerHTML", "eval(", "new Function", "setAttribute(\"style\"",
                   "document.write"):
        assert banned not in script


@pytest.mark.parametrize(("header", "name"), [
    ("Example.COM:8080", "example.com"), ("[::1]:80", "::1"), ("localhost.", "localhost"),
    ("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
def test_host_names_are_read_like_browsers_send_them(header: str, name: str) -> None:
    assert host_name(header) == name


def test_the_bind_address_is_allowed_but_a_wildcard_bind_allows_nothing_more() -> None:
    assert HostAllowlist("10.1.2.3:8080", ()).allows("10.1.2.3")
    wildcard = HostAllowlist("0.0.0.0:8080", ())
    assert not wildcard.allows("evil.example") and wildcard.allows("localhost")
    assert not wildcard.allows("10.9.9.9")
    assert wildcard.allows("10.9.9.9", local_ip="10.9.9.9")  # the address we were reached on
    assert HostAllowlist("0.0.0.0:8080", ("*",)).allows("anything.example")
