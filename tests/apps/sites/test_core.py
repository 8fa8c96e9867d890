"""The sites logic on a real replicated state (one node, in-memory transport, virtual
clock) with the blobstore replaced by a dict that records every read."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import pytest
import trio

from apps.ingress.targets import HostRequest, HostResponse
from apps.sites.core import Sites
from apps.sites.manifest import KEEP_VERSIONS, SiteError, file_key
from apps.sites.tables import SITE_STATS, SITES, site_stats
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.state.config import local
from meshcloud.state.driver import StateDriver
from meshcloud.state.kv import MemoryKv
from meshcloud.testing import TestMesh, TrioClock
from meshcloud.transport.memory import MemoryNetwork


class DictStorage:
    """Objects in a dict; ``reads`` lists every key read; ``broken`` fails every call."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.broken = False
        self.unlisted: set[str] = set()
        """Keys a (lagging) listing does not show yet."""

    def _check(self) -> None:
        if self.broken:
            raise MeshError("storage down", code="unavailable")

    async def ensure_bucket(self) -> None:
        self._check()

    async def size_of(self, key: str) -> int | None:
        self._check()
        data = self.objects.get(key)
        return None if data is None else len(data)

    async def put(self, key: str, source: AsyncIterable[bytes], *, size: int,
                  content_type: str, check: Callable[[], None]) -> None:
        self._check()
        data = b"".join([piece async for piece in source])
        check()
        self.objects[key] = data

    async def handle(self, key: str) -> Any:
        self._check()
        if key not in self.objects:
            raise MeshError(f"no object {key}", code="not_found")
        return key

    async def read(self, handle: Any, start: int, end: int) -> AsyncIterator[bytes]:
        self._check()
        self.reads.append(handle)
        data = self.objects[handle][start:end]
        for i in range(0, len(data), 7):
            yield data[i:i + 7]

    async def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def sizes(self, prefix: str) -> dict[str, int]:
        self._check()
        return {k: len(v) for k, v in self.objects.items()
                if k.startswith(prefix) and k not in self.unlisted}


async def one_state(nursery: trio.Nursery) -> StateDriver:
    mesh = TestMesh.with_members(1)
    network = MemoryNetwork(seed=1)
    transport = network.add(mesh.members[0].key, mesh.members[0].authenticator)
    await nursery.start(transport.run)
    state = StateDriver(transport, MemoryKv(), lambda: [], config=local(),
                        rng=random.Random(1), clock=TrioClock())
    state.open_table(SITES)
    state.open_table(SITE_STATS)
    await nursery.start(state.run)
    return state


@pytest.fixture
async def env(nursery: trio.Nursery) -> tuple[Sites, DictStorage]:
    state = await one_state(nursery)
    storage = DictStorage()
    wall = [1_700_000_000_000]

    def wall_ms() -> int:
        wall[0] += 1000
        return wall[0]

    sites = Sites(state, storage, node_id=b"n" * 32, wall_ms=wall_ms,
                  monotonic=trio.current_time, cache_bytes=1 << 20)
    return sites, storage


def listing(tree: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for p, b in tree.items()]


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 5):
        yield data[i:i + 5]


async def deploy(sites: Sites, name: str, tree: dict[str, bytes], **extra: Any
                 ) -> dict[str, Any]:
    files = listing(tree)
    missing = set(await sites.missing(name, files))
    for _path, data in tree.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest in missing:
            await sites.upload(name, digest, len(data), chunks(data))
            missing.discard(digest)
    return await sites.commit(name, {"files": files, **extra})


async def body_of(response: HostResponse) -> bytes:
    if isinstance(response.body, bytes):
        return response.body
    return b"".join([piece async for piece in response.body])


async def fetch(sites: Sites, host: str, target: str, method: str = "GET",
                headers: list[tuple[bytes, bytes]] | None = None
                ) -> tuple[HostResponse, bytes]:
    name = sites.site_for(host)
    assert name is not None, f"no site for {host}"
    response = await sites.respond(name, HostRequest(method=method, target=target,
                                                     headers=headers or [],
                                                     client_ip="127.0.0.1", host=host))
    return response, await body_of(response)


def hdr(response: HostResponse, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name), None)


BLOG = {"index.html": b"<h1>v1</h1>", "404.html": b"<h1>lost</h1>",
        "css/site.css": b"body{color:red}", "big.bin": bytes(range(256)) * 2000}


async def test_deploy_then_serve_byte_exact(env, autojump_clock) -> None:
    sites, _storage = env
    reply = await deploy(sites, "blog", BLOG, domains=["Blog.Home."])
    assert reply["current"] == 1 and reply["domains"] == ["blog.home"]
    response, body = await fetch(sites, "blog.home", "/")
    assert response.status == 200 and body == BLOG["index.html"]
    response, body = await fetch(sites, "blog.home", "/css/site.css")
    assert body == BLOG["css/site.css"] and hdr(response, b"content-type").startswith(
        b"text/css")
    response, body = await fetch(sites, "blog.home", "/big.bin")  # over the cache bound
    assert body == BLOG["big.bin"] and not isinstance(response.body, bytes)
    response, body = await fetch(sites, "blog.home", "/big.bin",
                                 headers=[(b"range", b"bytes=1000-1999")])
    assert response.status == 206 and body == BLOG["big.bin"][1000:2000]
    response, body = await fetch(sites, "blog.home", "/nope")
    assert response.status == 404 and body == BLOG["404.html"]
    response, body = await fetch(sites, "blog.home", "/", method="HEAD")
    assert body == b"" and hdr(response, b"content-length") == b"11"
    counters = sites.counters["blog"]
    assert (counters.requests, counters.not_found, counters.errors) == (6, 1, 0)
    assert sites.site_for("other.home") is None


async def test_hot_files_come_from_memory(env, autojump_clock) -> None:
    sites, storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    await fetch(sites, "blog.home", "/css/site.css")
    before = list(storage.reads)
    for _ in range(3):
        _, body = await fetch(sites, "blog.home", "/css/site.css")
        assert body == BLOG["css/site.css"]
    assert storage.reads == before
    assert sites.cache.hits >= 3


async def test_an_upload_that_does_not_match_its_digest_stores_nothing(env, autojump_clock
                                                                       ) -> None:
    sites, storage = env
    digest = hashlib.sha256(b"good").hexdigest()
    with pytest.raises(SiteError, match="hash"):
        await sites.upload("blog", digest, 4, chunks(b"evil"))
    with pytest.raises(SiteError, match="announced"):
        await sites.upload("blog", digest, 3, chunks(b"good"))
    with pytest.raises(SiteError, match="bytes"):
        await sites.upload("blog", digest, 5, chunks(b"good"))
    assert storage.objects == {}


async def test_a_commit_with_files_not_uploaded_changes_nothing(env, autojump_clock) -> None:
    sites, _storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    before = sites.state.get(SITES.name, "blog")
    with pytest.raises(SiteError, match="not uploaded"):
        await sites.commit("blog", {"files": listing({"index.html": b"new"})})
    for bad in ({"files": [{"path": "../x", "size": 1, "sha256": "0" * 64}]},
                {"files": listing(BLOG), "domains": ["bad host"]},
                {"files": listing(BLOG), "spa": "yes"},
                {"files": listing(BLOG), "max_age": -1}, {"files": []}, []):
        with pytest.raises(SiteError):
            await sites.commit("blog", bad)
    with pytest.raises(SiteError):
        await sites.commit("Bad_Name", {"files": listing(BLOG)})
    assert sites.state.get(SITES.name, "blog") == before


async def test_a_domain_serves_one_site(env, autojump_clock) -> None:
    sites, _ = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    with pytest.raises(MeshError) as caught:
        await deploy(sites, "other", BLOG, domains=["www.home", "blog.home"])
    assert caught.value.code == "conflict"
    assert sites.state.get(SITES.name, "other") is None
    with pytest.raises(SiteError, match="domain"):
        await deploy(sites, "nodomain", BLOG)


async def test_redeploy_switches_and_rollback_returns(env, autojump_clock) -> None:
    sites, storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    switched = sites.site("blog").switched_ms
    v2 = {**BLOG, "index.html": b"<h1>v2</h1>"}
    uploads_before = len(storage.objects)
    assert await sites.missing("blog", listing(v2)) == [
        hashlib.sha256(b"<h1>v2</h1>").hexdigest()]
    reply = await deploy(sites, "blog", v2)  # domains kept from the first deploy
    assert reply["current"] == 2 and reply["domains"] == ["blog.home"]
    assert len(storage.objects) == uploads_before + 2  # one file + one manifest
    assert (await fetch(sites, "blog.home", "/"))[1] == b"<h1>v2</h1>"
    assert sites.site("blog").switched_ms > switched
    await sites.rollback("blog")
    assert (await fetch(sites, "blog.home", "/"))[1] == b"<h1>v1</h1>"
    with pytest.raises(SiteError, match="no version before"):
        await sites.rollback("blog")
    await sites.rollback("blog", 2)
    assert (await fetch(sites, "blog.home", "/"))[1] == b"<h1>v2</h1>"
    with pytest.raises(NotFoundError):
        await sites.rollback("blog", 7)
    with pytest.raises(NotFoundError):
        await sites.rollback("ghost")


async def test_old_versions_are_pruned_with_their_files(env, autojump_clock) -> None:
    sites, storage = env
    for n in range(1, KEEP_VERSIONS + 3):
        await deploy(sites, "blog", {"index.html": f"v{n}".encode(), "same.txt": b"s"},
                     domains=["blog.home"])
    record = sites.site("blog")
    assert [v.version for v in record.versions] == list(range(3, KEEP_VERSIONS + 3))
    assert file_key("blog", hashlib.sha256(b"v1").hexdigest()) not in storage.objects
    assert file_key("blog", hashlib.sha256(b"v3").hexdigest()) in storage.objects
    assert file_key("blog", hashlib.sha256(b"s").hexdigest()) in storage.objects
    manifests = [k for k in storage.objects if "/versions/" in k]
    assert len(manifests) == KEEP_VERSIONS
    await sites.rollback("blog", 3)
    assert (await fetch(sites, "blog.home", "/"))[1] == b"v3"


async def test_hostile_paths_never_read_outside_the_version(env, autojump_clock) -> None:
    sites, storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    await deploy(sites, "secret", {"index.html": b"secret", "key.txt": b"k"},
                 domains=["secret.home"])
    storage.reads.clear()
    allowed = {e.key for e in (await sites.files("blog", sites.site("blog").versions[0]))
               .values()}
    for target in ["/../secret/index.html", "/%2e%2e/%2e%2e/secret/files", "/..%2fkey.txt",
                   "/a\\..\\b", "/index.html%00.png", "/" + "a/" * 3000, "/%2e%2e",
                   "/key.txt", "//secret.home/index.html", "/css/../../key.txt"]:
        response, _ = await fetch(sites, "blog.home", target)
        assert response.status in (400, 404), target
    assert set(storage.reads) <= allowed | {v.manifest_key
                                            for v in sites.site("blog").versions}


async def test_remove_stops_serving_and_deletes_objects(env, autojump_clock) -> None:
    sites, storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    await fetch(sites, "blog.home", "/css/site.css")  # cached here
    await deploy(sites, "keep", {"index.html": b"keep"}, domains=["keep.home"])
    reply = await sites.remove("blog")
    assert reply["objects"] == len(BLOG) + 1
    assert sites.site_for("blog.home") is None
    assert all(not k.startswith("blog/") for k in storage.objects)
    assert (await fetch(sites, "keep.home", "/"))[1] == b"keep"
    with pytest.raises(NotFoundError):
        await sites.remove("blog")
    again = await deploy(sites, "blog", BLOG, domains=["blog.home"])
    assert again["current"] == 1
    assert (await fetch(sites, "blog.home", "/css/site.css"))[1] == BLOG["css/site.css"]


async def test_storage_failure_is_a_503_and_an_error(env, autojump_clock) -> None:
    sites, storage = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    sites.manifests.clear()
    storage.broken = True
    response, _body = await fetch(sites, "blog.home", "/")
    assert response.status == 503 and hdr(response, b"retry-after") == b"2"
    assert sites.counters["blog"].errors == 1


async def test_counters_are_published_per_node(env, autojump_clock) -> None:
    sites, _ = env
    await deploy(sites, "blog", BLOG, domains=["blog.home"])
    await fetch(sites, "blog.home", "/")
    await fetch(sites, "blog.home", "/missing")
    assert sites.publish_stats() == 1
    assert sites.publish_stats() == 0  # unchanged: nothing written
    row = site_stats(sites.state)["blog"][b"n" * 32]
    assert (row.requests, row.not_found) == (2, 1)
    overview = {s["name"]: s for s in sites.overview()}
    assert overview["blog"]["stats"]["requests"] == 2


async def test_a_lagging_listing_costs_an_upload_never_a_refused_commit(env, autojump_clock
                                                                        ) -> None:
    sites, storage = env
    tree = {"index.html": b"hello"}
    digest = hashlib.sha256(b"hello").hexdigest()
    await sites.upload("blog", digest, 5, chunks(b"hello"))
    storage.unlisted.add(file_key("blog", digest))
    assert await sites.missing("blog", listing(tree)) == [digest]
    assert await sites.missing("blog", listing(tree), confirm=True) == []
    reply = await sites.commit("blog", {"files": listing(tree), "domains": ["blog.home"]})
    assert reply["current"] == 1
    storage.objects[file_key("blog", digest)] = b"hell"  # listed, but the wrong size
    storage.unlisted.clear()
    assert await sites.missing("blog", listing(tree)) == [digest]
