"""Images pushed to the mesh: archive parsing, placement's view, loading on demand."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from apps.workloads.catalogue import (
    ImageArchiveError,
    archive_references,
    normalize_reference,
    with_catalogue,
)
from apps.workloads.messages import NodeOffer
from apps.workloads.ondemand import OnDemandRuntime


def _archive(manifest: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_references_come_from_the_manifest(tmp_path):
    data = _archive([{"Config": "x.json", "RepoTags": ["localhost/meshcloud/web:1"]},
                     {"RepoTags": ["nginx:1.25", "quay.io/a/b:2"]}])
    want = ["docker.io/library/nginx:1.25", "localhost/meshcloud/web:1", "quay.io/a/b:2"]
    assert archive_references(data) == want
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    assert archive_references(path) == want


@pytest.mark.parametrize("data", [b"not a tar", _archive([{"RepoTags": []}]), _archive({})])
def test_bad_archives_are_one_clear_error(data):
    with pytest.raises(ImageArchiveError) as info:
        archive_references(data)
    assert "podman save" in info.value.message


def test_normalize_reference():
    assert normalize_reference("nginx:1") == "docker.io/library/nginx:1"
    assert normalize_reference("me/app:2") == "docker.io/me/app:2"
    assert normalize_reference("localhost/x:1") == "localhost/x:1"
    assert normalize_reference("registry:5000/x:1") == "registry:5000/x:1"


@given(st.dictionaries(st.binary(min_size=1, max_size=4),
                       st.tuples(st.booleans(), st.frozensets(st.sampled_from("abc"))),
                       max_size=6),
       st.frozensets(st.sampled_from("abcd")))
def test_with_catalogue_puts_pushed_images_on_every_podman_node(nodes, pushed):
    offers = {n: NodeOffer(runtimes=("podman",) if podman else ("process",),
                           images=tuple(sorted(images))) for n, (podman, images) in nodes.items()}
    seen = with_catalogue(offers, pushed)
    assert set(seen) == set(offers)
    for node, offer in seen.items():
        original = offers[node]
        assert set(original.images) <= set(offer.images)
        assert list(offer.images) == sorted(set(offer.images))
        if "podman" in original.runtimes:
            assert set(offer.images) == set(original.images) | pushed
        else:
            assert offer == original


class FakeStore:
    """A podman runtime's image side, for the wrapper around it."""

    def __init__(self) -> None:
        self.images: list[str] = []
        self.loads: list[bytes] = []
        self.kind = "podman"

    async def list_images(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self.images)

    async def load_image(self, path: Path) -> list[str]:
        self.loads.append(path.read_bytes())
        self.images.append("localhost/x:1")
        return ["localhost/x:1"]

    async def ensure_image(self, image: str | None) -> None:
        await trio.lowlevel.checkpoint()
        if image not in self.images:
            raise LookupError(image)


async def test_missing_image_is_fetched_and_loaded_once(tmp_path):
    inner = FakeStore()
    fetched: list[str] = []

    async def fetch(ref: str) -> Path | None:
        fetched.append(ref)
        if ref != "localhost/x:1":
            return None
        path = tmp_path / "x.tar"
        path.write_bytes(b"archive")
        return path

    async def start() -> None:
        await trio.lowlevel.checkpoint()

    rt = OnDemandRuntime(inner, start, fetch=fetch)  # type: ignore[arg-type]
    await rt.ensure_image("localhost/x:1")
    await rt.ensure_image("localhost/x:1")
    assert inner.loads == [b"archive"] and fetched == ["localhost/x:1"]
    assert not (tmp_path / "x.tar").exists() and rt.loaded == ["localhost/x:1"]
    with pytest.raises(LookupError):  # not in the mesh: the runtime's own error
        await rt.ensure_image("localhost/nope:1")
    assert inner.loads == [b"archive"]
