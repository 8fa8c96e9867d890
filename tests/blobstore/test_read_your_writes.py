"""Read-your-writes across nodes: after a PUT, an overwrite or a DELETE is acknowledged by
one node, a GET / HEAD / listing through any other node sees it (or something newer).

Real object stores, index services and state drivers over the in-memory transport under
a virtual clock; every node returns from a quorum call at its quorum, as on a real node
(stragglers finish in the background). What a node believes is live, and its wall clock,
are set per node: they differ between real machines.
"""

from __future__ import annotations

import random

import pytest
import trio

from blobstore.bucketlist import list_bucket
from blobstore.index import INDEX_PROTOCOL, Index, IndexService
from blobstore.objects import ObjectStore
from blobstore.picker import PlacementPicker
from blobstore.records import BLOBREFS, BUCKETS, OBJECTS, open_tables
from blobstore.s3.errors import NoSuchKey
from blobstore.sortkeys import sort_key
from blobstore.uploads import Uploads
from meshcloud.clock import ManualClock
from meshcloud.state.config import local
from meshcloud.state.driver import StateDriver
from meshcloud.state.kv import MemoryKv
from meshcloud.testing import TestMesh
from meshcloud.transport.memory import MemoryNetwork
from tests.blobstore.fakes import MemoryShardClient, source

EPOCH_MS = 1_767_225_600_000


class Node:
    def __init__(self, index: Index, store: ObjectStore, view: list[bytes],
                 suspects: set[bytes]) -> None:
        self.index = index
        self.store = store
        self.view = view
        """What this node's membership holds live (edit it as membership would)."""
        self.suspects = suspects
        """The live members this node's gossip suspects."""

    @property
    def me(self) -> bytes:
        return self.index.me


async def start(nursery, n: int = 5, *, skew_ms: dict[int, int] | None = None) -> tuple[
        MemoryNetwork, list[Node]]:
    """``n`` nodes; ``skew_ms[i]``: how far node i's wall clock is ahead."""
    mesh = TestMesh.with_members(n)
    network = MemoryNetwork(seed=1, latency=0.002)
    transports = [network.add(m.key, m.authenticator) for m in mesh.members]
    ids = [t.local_id for t in transports]
    for t in transports:
        for other in transports:
            if other is not t:
                t.set_addresses(other.local_id, other.listen_addresses)
        await nursery.start(t.run)
    shards = MemoryShardClient(ids)
    nodes = []
    for i, t in enumerate(transports):
        view = list(ids)
        clock = ManualClock(epoch_ms=EPOCH_MS + (skew_ms or {}).get(i, 0))
        state = StateDriver(t, MemoryKv(), lambda v=view: v, config=local(),
                            rng=random.Random(i), clock=clock)
        open_tables(state)
        await nursery.start(state.run)
        service = IndexService(state)
        service.register(t)
        suspects: set[bytes] = set()
        index = Index(t, state, service, lambda v=view: v, timeout=1.0,
                      suspects=lambda s=suspects: s, known=lambda: ids)
        index.nursery = nursery  # as on a node: a call returns at its quorum
        store = ObjectStore(state, index, shards, PlacementPicker(lambda v=view: v),
                            wall_ms=lambda c=clock: c.wall_ms() + int(trio.current_time() * 1000))
        nodes.append(Node(index, store, view, suspects))
    await nodes[0].store.create_bucket("bkt")
    return network, nodes


async def put(node: Node, key: str, body: bytes) -> None:
    await node.store.put("bkt", key, source(body), size_hint=len(body))


async def body_via(node: Node, key: str) -> bytes | None:
    """GET through ``node`` (None: NoSuchKey)."""
    try:
        record = await node.store.head("bkt", key)
    except NoSuchKey:
        return None
    return b"".join([piece async for piece in node.store.read(record)])


async def listed_via(node: Node) -> dict[str, str]:
    bucket = node.store.bucket("bkt")
    page = await list_bucket(node.index, bucket.bucket_id)
    return {key: entry.etag for key, entry in page.contents}


def holders(node: Node) -> list[bytes]:
    return node.index.holders(OBJECTS.name, (node.store.bucket("bkt").bucket_id,))


def behind_and_not_holders(nodes: list[Node]) -> tuple[Node, Node, Node]:
    """Node 0 (its clock ahead), and two others that hold none of the bucket's rows: they
    never merge node 0's entries, so their clocks do not follow it."""
    others = [n for n in nodes[1:] if n.me not in holders(nodes[0])]
    return nodes[0], others[0], others[1]


@pytest.mark.parametrize("size", [100, 10_000])  # inline in the record / in shards
async def test_put_overwrite_delete_then_read_through_every_other_node(
        nursery, autojump_clock, size):
    _network, nodes = await start(nursery)
    rng = random.Random(size)
    expected: dict[str, bytes] = {}
    for step in range(60):
        writer = rng.choice(nodes)
        key = f"k{rng.randrange(4)}"
        if rng.random() < 0.25:
            await writer.store.delete("bkt", key)
            expected.pop(key, None)
        else:
            body = rng.randbytes(size) + step.to_bytes(2, "big")
            await put(writer, key, body)
            expected[key] = body
        for reader in nodes:  # at once: no anti-entropy, no background leg has to land
            if reader is writer:
                continue
            assert await body_via(reader, key) == expected.get(key), (step, key)
        listing = await listed_via(rng.choice(nodes))
        assert sorted(listing) == sorted(expected), step


@pytest.mark.parametrize("ahead_ms", [2_000, 9_000])
async def test_overwrite_and_delete_through_a_node_behind_a_node_whose_clock_runs_ahead(
        nursery, autojump_clock, ahead_ms):
    """Node 0's clock runs ahead (a board without RTC, a phone set by hand, or any node
    just restarted: its stamps resume at its persisted HLC ceiling, up to 10 s ahead). A
    later overwrite or delete through another node must still win."""
    _network, nodes = await start(nursery, n=6, skew_ms={0: ahead_ms})
    ahead, other, reader = behind_and_not_holders(nodes)
    await put(ahead, "backup.info", b"old")
    await put(other, "backup.info", b"new")  # acknowledged after the first one
    assert await body_via(reader, "backup.info") == b"new"
    assert await body_via(other, "backup.info") == b"new"
    await put(ahead, "gone", b"x")
    await other.store.delete("bkt", "gone")
    assert await body_via(reader, "gone") is None
    assert "gone" not in await listed_via(reader)
    await other.store.delete_many("bkt", ["backup.info"])
    assert await body_via(reader, "backup.info") is None


async def test_read_through_a_node_that_has_not_seen_a_join_yet(nursery, autojump_clock):
    """Node ``new`` joins; the writer already counts it live (so it ranks it among the
    bucket's holders), the reader does not yet. One of the writer's acknowledging holders
    answers the reader slowly; the two others the reader asks hold the old object."""
    network, nodes = await start(nursery, n=6)
    by_id = {n.me: n for n in nodes}
    everyone = list(nodes[0].view)
    # the joiner: a node that ranks among the top three once it is live
    new = by_id[holders(nodes[0])[0]]
    for node in nodes:
        node.view.remove(new.me)
    first = next(n for n in nodes if n is not new)
    before = holders(first)  # top three without the joiner: h1, h2, h3
    await put(first, "k", b"old")
    await trio.sleep(1)  # every holder has the old object
    writer = next(n for n in nodes if n.me not in before and n is not new)
    writer.view[:] = everyone  # the writer has seen the join
    after = holders(writer)
    assert new.me in after and len(set(after) & set(before)) == 2
    h1, h2 = (by_id[h] for h in after if h != new.me)
    h3 = by_id[next(h for h in before if h not in after)]
    # h2 misses the write and the news of it (unreachable for a moment)
    network.crash(h2.me)
    await put(writer, "k", b"new")  # acknowledged by the joiner and h1
    network.revive(h2.me)
    serve1 = h1.index.service.handle

    async def slow(stream):  # h1 answers the reader last
        await trio.sleep(0.5)
        await serve1(stream)

    h1.index.transport.registry.handlers[INDEX_PROTOCOL] = slow
    reader = h3  # has not seen the join: it asks h1, h2 and itself
    assert holders(reader) == before
    assert await body_via(reader, "k") == b"new"
    assert (await listed_via(reader))["k"] == (await writer.store.head("bkt", "k")).etag


async def test_a_read_does_not_wait_for_a_holder_gossip_suspects(nursery, autojump_clock):
    """A holder that stopped answering (a phone asleep, a stalled machine) costs a read
    the request timeout until gossip suspects it; from then on the other two suffice."""
    _network, nodes = await start(nursery)
    by_id = {n.me: n for n in nodes}
    await put(nodes[0], "k", b"v")
    await trio.sleep(1)
    stalled = by_id[holders(nodes[0])[2]]
    reader = next(n for n in nodes if n.me not in holders(nodes[0]))

    async def silent(stream):
        await trio.sleep_forever()

    stalled.index.transport.registry.handlers[INDEX_PROTOCOL] = silent
    began = trio.current_time()
    assert await body_via(reader, "k") == b"v"
    assert trio.current_time() - began > reader.index.timeout * 0.9  # heard everyone
    reader.suspects.add(stalled.me)
    began = trio.current_time()
    assert await body_via(reader, "k") == b"v"
    assert "k" in await listed_via(reader)
    assert trio.current_time() - began < reader.index.timeout / 2


async def test_two_nodes_that_each_think_the_other_dead(nursery, autojump_clock):
    """Two busy nodes miss each other's probes and each declares the other dead, while
    their connection stays up: each now writes with a quorum of one (itself). A write is
    still handed to the other before it is acknowledged, so a read through the other,
    which asks only itself, sees it; a real node that is gone costs the write nothing."""
    network, nodes = await start(nursery, n=2)
    a, b = nodes
    await put(a, "k", b"old")
    a.view.remove(b.me)
    b.view.remove(a.me)
    assert holders(a) == [a.me] and holders(b) == [b.me]
    await put(a, "k", b"new")
    assert await body_via(b, "k") == b"new"
    await b.store.delete("bkt", "k")
    assert await body_via(a, "k") is None
    assert a.index.handed_off >= 1 and b.index.handed_off >= 1
    network.crash(b.me)  # really gone: the write does not wait for it
    began = trio.current_time()
    await put(a, "solo", b"x")
    assert trio.current_time() - began < a.index.timeout / 2
    assert await body_via(a, "solo") == b"x"


async def test_bucket_created_through_one_node_is_usable_through_any_other(
        nursery, autojump_clock):
    _network, nodes = await start(nursery)
    await nodes[1].store.create_bucket("fresh")
    for node in nodes:
        assert node.store.bucket("fresh").bucket_id == nodes[1].store.bucket("fresh").bucket_id
    await nodes[2].store.delete_bucket("fresh")
    for node in nodes:  # gone everywhere; the row keeps the generation for the next one
        assert node.store.find_bucket("fresh") is None
        assert node.index.state.get(BUCKETS.name, "fresh").deleted


async def test_multipart_through_nodes_behind_a_node_whose_clock_runs_ahead(
        nursery, autojump_clock):
    """Upload made and a part sent through a node running ahead; the part sent again and
    the upload completed through nodes behind it: the object has the later part, its
    blob reference follows the object (not the removed upload), and nothing of the upload
    is left listed."""
    _network, nodes = await start(nursery, n=6, skew_ms={0: 9_000})
    ahead, other, reader = behind_and_not_holders(nodes)
    up_ahead, up_other = Uploads(ahead.store), Uploads(other.store)
    upload_id = await up_ahead.create("bkt", "big", content_type="x/y", metadata={})
    await up_ahead.upload_part("bkt", upload_id, 1, source(b"old part"))
    part = await up_other.upload_part("bkt", upload_id, 1, source(b"new part"))
    record = await Uploads(reader.store).complete("bkt", upload_id, [(1, part.etag)])
    assert await body_via(reader, "big") == b"new part"
    assert await body_via(ahead, "big") == b"new part"
    ref = await reader.index.get_value(BLOBREFS.name, (record.manifest.object_id,))
    assert ref.upload_id == "" and ref.sort_key == sort_key("big")
    assert await Uploads(ahead.store).list("bkt") == []
    bucket_id = reader.store.bucket("bkt").bucket_id
    assert await Uploads(ahead.store).parts(bucket_id, upload_id) == []
