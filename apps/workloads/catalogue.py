"""Images of the mesh: ``podman save`` archives kept in the blobstore, loaded on demand.

There is no registry. ``meshcloud images push ARCHIVE`` stores the archive as an object of
the mesh's own bucket :data:`BUCKET` (key ``archives/<sha256>.tar``, erasure coded like any
object) and writes one row per image reference in the ``images`` table (LWW, full copy on
every node). From then on the image counts as present on every node with the podman
runtime: admission accepts it and placement may put a replica anywhere
(:func:`with_catalogue`). The node that starts a replica loads the archive into its store
first (:class:`~apps.workloads.ondemand.OnDemandRuntime`, through :func:`fetch_archive`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from apps.workloads.messages import MeshImage, NodeOffer
from meshcloud.errors import MeshError
from meshcloud.state.schema import TableSchema, record_codec

BUCKET = "meshcloud-images"
"""The mesh's own bucket of image archives."""

_enc, _dec = record_codec(MeshImage)
IMAGES: TableSchema[MeshImage] = TableSchema(
    "images", partition=(str,), encode=_enc, decode=_dec, max_value_bytes=4 * 1024)


class ImageArchiveError(MeshError):
    code = "bad_image_archive"


def archive_key(sha256: str) -> str:
    return f"archives/{sha256}.tar"


def mesh_images(state: Any) -> dict[str, MeshImage]:
    """Every pushed image, by reference."""
    return {key[0]: value for key, value in state.scan(IMAGES.name)
            if isinstance(key[0], str) and value is not None}


def with_catalogue(offers: Mapping[bytes, NodeOffer], refs: set[str] | frozenset[str]
                   ) -> dict[bytes, NodeOffer]:
    """Offers as placement should see them: a pushed image is on every podman node."""
    if not refs:
        return dict(offers)
    out = {}
    for node, offer in offers.items():
        if "podman" in offer.runtimes:
            missing = sorted(refs - set(offer.images))
            if missing:
                offer = replace(offer, images=tuple(sorted((*offer.images, *missing))))
        out[node] = offer
    return out


def archive_references(head: bytes | Path) -> list[str]:
    """The image references a ``podman save`` / ``docker save`` archive names (its
    ``manifest.json`` RepoTags), or :class:`ImageArchiveError` saying why not."""
    import tarfile  # here: an agent that never loads an archive never imports it

    source: dict[str, Any] = ({"name": head} if isinstance(head, Path)
                              else {"fileobj": io.BytesIO(head)})
    try:
        with tarfile.open(mode="r:", **source) as tar:
            member = tar.getmember("manifest.json")
            raw = tar.extractfile(member)
            manifest = json.loads(raw.read() if raw else b"")
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ImageArchiveError(
            f"not an image archive ({type(exc).__name__}: {exc}); make one with "
            "`podman save -o image.tar IMAGE` (docker-archive format)") from None
    refs = sorted({str(t) for entry in manifest if isinstance(entry, dict)
                   for t in entry.get("RepoTags") or []})
    if not refs:
        raise ImageArchiveError("the archive names no image (no RepoTags): save it by name, "
                                "`podman save -o image.tar NAME:TAG`")
    return sorted({normalize_reference(r) for r in refs})


def normalize_reference(ref: str) -> str:
    """A reference as podman names it once loaded (``nginx:1`` -> ``docker.io/library/
    nginx:1``; ``localhost/x:1`` and ``host.tld/x:1`` stay)."""
    first, sep, _ = ref.partition("/")
    if sep and (first == "localhost" or "." in first or ":" in first):
        return ref
    path = ref if sep else f"library/{ref}"
    return f"docker.io/{path}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


async def fetch_archive(objects: Any, image: MeshImage, dest: Path) -> Path:
    """Copy ``image``'s archive from the blobstore to ``dest``, checking its digest."""
    import trio

    record = await objects.head(BUCKET, image.key)
    h = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    async with await trio.open_file(tmp, "wb") as f:
        async for piece in objects.read(record):
            h.update(piece)
            await f.write(piece)
    if h.hexdigest() != image.sha256:
        await trio.Path(tmp).unlink(missing_ok=True)
        raise ImageArchiveError(f"archive {image.key} does not match its digest")
    await trio.Path(tmp).rename(dest)
    return dest
