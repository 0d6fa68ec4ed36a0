"""Release edits, format by format: the declaration changes as its tool would change it, and
nothing else in the file moves (comments, order, quoting, indentation)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.domain import release as rel

DIGEST = "sha256:" + "ab" * 32

KUSTOMIZATION = """\
# prod overlay: owned by the platform team
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base   # the shared base
images:
  - name: web    # the storefront
    newTag: "1.0.0"
  - name: worker
    newName: registry.example/worker
    digest: sha256:0000000000000000000000000000000000000000000000000000000000000000
namePrefix: prod-
"""


def test_parse_image_forms() -> None:
    assert rel.parse_image("web=registry.example:5000/web:1.2.3") == rel.ImageSpec(
        "web", "registry.example:5000/web", "1.2.3")
    assert rel.parse_image(f"web=web@{DIGEST}") == rel.ImageSpec("web", "web", "", DIGEST)
    assert rel.parse_image("web=:2.0") == rel.ImageSpec("web", "web", "2.0", kept=True)
    assert str(rel.parse_image("web=:2.0")) == "web=:2.0"
    assert str(rel.parse_image(f"web=reg/web@{DIGEST}")) == f"web=reg/web@{DIGEST}"
    for bad, why in [("web", "NAME=REF"), ("web=web", "a tag"), ("web=web:bad tag", "tag"),
                     ("web=web@sha256:12", "digest"), ("Web!=x:1", "image name")]:
        with pytest.raises(rel.ReleaseError, match=why):
            rel.parse_image(bad)


def test_parse_set_and_trailer_round_trip() -> None:
    spec = rel.parse_set("image.tag=1.2.3")
    assert spec.path == ("image", "tag") and spec.value == "1.2.3"
    with pytest.raises(rel.ReleaseError):
        rel.parse_set("image..tag=1")
    line = rel.trailer([rel.parse_image("web=reg/web:1.2")], [spec])
    assert line == "Conveyor-Release: web=reg/web:1.2, image.tag=1.2.3"
    assert rel.parse_trailer(f"Release\n\n{line}\n") == ["web=reg/web:1.2", "image.tag=1.2.3"]


def test_kustomize_images_edit_keeps_the_file_and_matches_kustomize_fields() -> None:
    out = rel.set_kustomize_images(KUSTOMIZATION, [
        rel.parse_image("web=registry.example/web:1.4.2"),
        rel.parse_image("worker=registry.example/worker:2.0"),
        rel.parse_image(f"api=api@{DIGEST}"),
    ], "kustomization.yaml")
    data = yaml.safe_load(out)
    assert data["images"] == [
        {"name": "web", "newTag": "1.4.2", "newName": "registry.example/web"},
        {"name": "worker", "newName": "registry.example/worker", "newTag": "2.0"},
        {"name": "api", "digest": DIGEST},
    ]
    # everything a person wrote is still there, in place
    for line in ("# prod overlay: owned by the platform team", "  - ../../base   # the shared base",
                 "  - name: web    # the storefront", "namePrefix: prod-"):
        assert line in out.splitlines()
    assert out.splitlines()[:5] == KUSTOMIZATION.splitlines()[:5]
    assert '    newTag: "1.4.2"' in out  # the author's quoting of the value is kept


def test_kustomize_edit_agrees_with_kustomize_itself(tmp_path: Path) -> None:
    """``kustomize edit set image`` (kubectl's bundled kustomize has no edit; the standalone
    binary may be absent): compare by what ``kubectl kustomize`` renders instead."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [deploy.yaml]\n")
    (base / "deploy.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n"
        "    spec:\n      containers:\n      - {name: web, image: web:0.1}\n"
        "      - {name: api, image: api:0.1}\n")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    text = "resources:\n  - ../base\n"
    text = rel.set_kustomize_images(text, [rel.parse_image("web=reg.example/web:1.4.2"),
                                           rel.parse_image(f"api=api@{DIGEST}")], "k.yaml")
    (overlay / "kustomization.yaml").write_text(text)
    proc = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0 and "not found" in proc.stderr:
        pytest.skip("kubectl is not installed")
    assert proc.returncode == 0, proc.stderr
    containers = yaml.safe_load(proc.stdout)["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["reg.example/web:1.4.2", f"api@{DIGEST}"]


def test_a_tag_alone_keeps_the_overlays_new_name() -> None:
    out = rel.set_kustomize_images(KUSTOMIZATION, [rel.parse_image("worker=:3.1")], "k.yaml")
    [_, worker] = yaml.safe_load(out)["images"]
    assert worker == {"name": "worker", "newName": "registry.example/worker", "newTag": "3.1"}
    same = rel.set_kustomize_images(KUSTOMIZATION, [rel.parse_image("worker=worker:3.1")],
                                    "k.yaml")
    assert "newName" not in yaml.safe_load(same)["images"][1]  # REF = NAME: no newName


def test_kustomize_images_read_back() -> None:
    images = rel.kustomize_images(KUSTOMIZATION, "k.yaml")
    assert [str(i) for i in images] == [
        "web=web:1.0.0", "worker=registry.example/worker@sha256:" + "0" * 64]


VALUES = """\
# values for prod
replicaCount: 2   # scaled by hand
image:
  repository: registry.example/web
  tag: "1.0.0"    # released by CI
  pullPolicy: IfNotPresent
sidecar:
  image: registry.example/proxy:0.9
enabled: true
"""


def test_helm_values_set_keeps_types_comments_and_adds_keys() -> None:
    out = rel.set_values(VALUES, [rel.parse_set("image.tag=1.4.2"),
                                  rel.parse_set("replicaCount=3"),
                                  rel.parse_set("enabled=false"),
                                  rel.parse_set("ingress.host=shop.example")],
                         [rel.parse_image("registry.example/proxy=registry.example/proxy:1.0")],
                         "values.yaml")
    data = yaml.safe_load(out)
    assert data["image"]["tag"] == "1.4.2"
    assert data["replicaCount"] == 3 and data["enabled"] is False  # types kept
    assert data["ingress"] == {"host": "shop.example"}
    assert data["sidecar"]["image"] == "registry.example/proxy:1.0"
    assert "replicaCount: 3   # scaled by hand" in out
    assert '  tag: "1.4.2"    # released by CI' in out
    assert out.startswith("# values for prod\n")


def test_helm_image_by_repository_and_a_missing_image() -> None:
    out = rel.set_values(VALUES, [], [rel.parse_image(
        f"registry.example/web=registry.example/web@{DIGEST}")], "values.yaml")
    assert yaml.safe_load(out)["image"]["digest"] == DIGEST
    with pytest.raises(rel.ReleaseError, match="no image 'nginx'"):
        rel.set_values(VALUES, [], [rel.parse_image("nginx=nginx:1")], "values.yaml")
    with pytest.raises(rel.ReleaseError, match="not a mapping"):
        rel.set_values(VALUES, [rel.parse_set("replicaCount.x=1")], [], "values.yaml")


def test_plain_and_jsonnet_references_are_replaced_in_place() -> None:
    files = {
        "envs/dev/deploy.yaml": "spec:\n  containers:\n    - name: web\n"
                                "      image: web:1.0  # pinned\n"
                                "    - name: webhook\n      image: webhook:3\n",
        "envs/dev/main.jsonnet": "{ image: 'web:1.0', name: 'web' }\n",
        "envs/dev/other.yaml": "data:\n  note: web:1.0 was the first release\n",
    }
    edits = rel.edit_text_files(files, [rel.parse_image("web=reg.example/web:2.0")])
    by_path = {e.path: e.text for e in edits}
    assert by_path["envs/dev/deploy.yaml"] == (
        "spec:\n  containers:\n    - name: web\n      image: reg.example/web:2.0  # pinned\n"
        "    - name: webhook\n      image: webhook:3\n")
    assert by_path["envs/dev/main.jsonnet"] == "{ image: 'reg.example/web:2.0', name: 'web' }\n"
    assert "envs/dev/other.yaml" not in by_path  # not on an image line
    with pytest.raises(rel.ReleaseError, match="no reference to image 'api'"):
        rel.edit_text_files(files, [rel.parse_image("api=api:1")])
