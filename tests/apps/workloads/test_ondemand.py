"""Podman on demand: a node touches its podman store only once something needs it."""

from __future__ import annotations

import json
import os

import pytest
import trio

from apps.runtimes.podman_service import podman_unavailable_reason, store_mounts
from apps.workloads.ondemand import OnDemandRuntime, has_containers, images_on_disk
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import LocalMesh, wait_for


def test_store_contents_read_from_disk(tmp_path):
    root = tmp_path / "root"
    assert images_on_disk(root) == [] and not has_containers(root)
    (root / "overlay-images").mkdir(parents=True)
    (root / "overlay-images" / "images.json").write_text(json.dumps([
        {"id": "a", "names": ["localhost/x:1", "localhost/x:latest"]},
        {"id": "b"}, {"id": "c", "names": ["docker.io/library/nginx:1.27"]}]))
    assert images_on_disk(root) == ["docker.io/library/nginx:1.27", "localhost/x:1",
                                    "localhost/x:latest"]
    (root / "overlay-containers").mkdir()
    (root / "overlay-containers" / "containers.json").write_text("[]")
    assert not has_containers(root)
    (root / "overlay-containers" / "containers.json").write_text('[{"id": "c1"}]')
    assert has_containers(root)
    (root / "overlay-images" / "images.json").write_text("{not json")
    assert images_on_disk(root) == []


_reason = podman_unavailable_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "rootful podman needs root"


@pytest.mark.podman
@pytest.mark.skipif(_reason is not None, reason=f"podman unusable: {_reason}")
async def test_podman_starts_only_when_needed_and_leaves_no_mount(tmp_path, nursery,
                                                                  monkeypatch):
    monkeypatch.delenv("MESHCLOUD_RUNTIMES", raising=False)
    mesh = await LocalMesh.create(tmp_path, nursery, 1, MemoryNetwork())
    member = mesh.members[0]
    service = member.service
    podman = service.runtimes["podman"]
    assert isinstance(podman, OnDemandRuntime) and not podman.started
    root = podman.service.graph_root
    assert store_mounts(root) == []  # nothing mounted, no podman process for this node
    offer = await service.publish_offer()
    assert "podman" in offer.runtimes and offer.images == ()
    built = await service.build_demo_images()
    assert podman.started and {b["image"] for b in built} == {
        "localhost/meshcloud/busybox:1", "localhost/meshcloud/web:1"}
    assert "localhost/meshcloud/web:1" in service.images
    assert store_mounts(root) != []
    assert images_on_disk(root) == sorted(service.images)  # the disk view agrees
    mesh.stop(member)
    with trio.fail_after(20):
        await member.done.wait()
    await wait_for(lambda: store_mounts(root) == [], "store released on a clean stop")
