"""Rules of the contract server itself that the client tests do not reach."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeapi.selectors import SelectorError, label_matcher


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI(tokens={"t"}) as server:
        yield server


async def call(fake: FakeKubeAPI, method: str, path: str, body: Any = None, *,
               ctype: str = "application/json", token: str = "t",
               **params: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype,
               "User-Agent": "test-agent/1.0"}
    data = None if body is None else json.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(
            method, fake.url + path, data=data, headers=headers, params=params) as r:
        return r.status, json.loads(await r.read())


CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
CMS = "/api/v1/namespaces/default/configmaps"


def test_label_selector_grammar() -> None:
    labels = {"app": "web", "tier": "front"}
    assert label_matcher("app=web,tier in (front, back)")(labels)
    assert label_matcher("app==web,env notin (prod),!env,tier")(labels)
    assert not label_matcher("app!=web")(labels)
    assert label_matcher("")(labels)
    with pytest.raises(SelectorError):
        label_matcher("app in web")


async def test_bad_token_is_a_401_status(fake: FakeKubeAPI) -> None:
    code, body = await call(fake, "GET", CMS, token="wrong")
    assert code == 401 and body["reason"] == "Unauthorized"
    assert fake.requests[-1].user == "anonymous"


async def test_create_update_replace_and_ownership(fake: FakeKubeAPI) -> None:
    code, created = await call(fake, "POST", CMS, CM)
    assert code == 201
    code, again = await call(fake, "POST", CMS, CM)
    assert code == 409 and again["reason"] == "AlreadyExists"

    code, patched = await call(fake, "PATCH", f"{CMS}/c", {"data": {"b": "2"}},
                               ctype="application/merge-patch+json")
    assert patched["data"] == {"a": "1", "b": "2"}
    assert {m["manager"] for m in patched["metadata"]["managedFields"]} == {"test-agent"}

    stale = {**CM, "metadata": {"name": "c", "resourceVersion":
                                created["metadata"]["resourceVersion"]}}
    code, conflict = await call(fake, "PUT", f"{CMS}/c", stale)
    assert code == 409 and "the object has been modified" in conflict["message"]

    # server-side apply of a field test-agent set to another value conflicts
    code, body = await call(fake, "PATCH", f"{CMS}/c", {**CM, "data": {"a": "9"}},
                            ctype="application/apply-patch+yaml", fieldManager="mgr")
    assert code == 409
    assert body["details"]["causes"] == [{"reason": "FieldManagerConflict", "field": ".data.a",
                                          "message": 'conflict with "test-agent" using v1'}]
    code, _ = await call(fake, "PATCH", f"{CMS}/c", CM, ctype="application/apply-patch+yaml")
    assert code == 422                                  # apply needs a fieldManager
    code, _ = await call(fake, "PATCH", f"{CMS}/c", [], ctype="application/json-patch+json")
    assert code == 415


async def test_deleting_a_namespace_removes_its_contents(fake: FakeKubeAPI) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}
    code, created = await call(fake, "POST", "/api/v1/namespaces", ns)
    assert created["status"] == {"phase": "Active"}
    assert created["metadata"]["labels"] == {"kubernetes.io/metadata.name": "tmp"}
    await call(fake, "POST", "/api/v1/namespaces/tmp/configmaps", CM)
    code, _ = await call(fake, "DELETE", "/api/v1/namespaces/tmp")
    assert code == 200
    assert fake.get("v1", "ConfigMap", "tmp", "c") is None


async def test_injected_failures_are_counted_and_scoped(fake: FakeKubeAPI) -> None:
    fake.inject_failure("/configmaps", 500, times=1, method="POST")
    assert (await call(fake, "GET", CMS))[0] == 200
    assert (await call(fake, "POST", CMS, CM))[0] == 500
    assert (await call(fake, "POST", CMS, CM))[0] == 201


async def test_apply_patches_may_be_json_or_yaml(fake: FakeKubeAPI) -> None:
    yaml_body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: '1'\n"
    headers = {"Authorization": "Bearer t", "Content-Type": "application/apply-patch+yaml"}
    async with aiohttp.ClientSession() as http:
        for name, body in (("y", yaml_body), ("j", json.dumps({**CM, "metadata": {"name": "j"}})),
                           ("bad", "data: [unclosed")):
            async with http.patch(f"{fake.url}{CMS}/{name}", data=body, headers=headers,
                                  params={"fieldManager": "m"}) as r:
                assert r.status == (400 if name == "bad" else 201), await r.text()
    assert fake.get("v1", "ConfigMap", "default", "y")["data"] == {"a": "1"}  # type: ignore[index]
    assert fake.get("v1", "ConfigMap", "default", "j")["data"] == {"a": "1"}  # type: ignore[index]
