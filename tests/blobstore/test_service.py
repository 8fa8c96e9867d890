"""The shard protocol over the in-memory transport, with real LMDB stores on every node."""

from __future__ import annotations

import random

import pytest
import trio
from trio.testing import MockClock

from blobstore.erasure import ZfecCode
from blobstore.errors import IntegrityError, NotEnoughShards, ShardNotFound, StoreFullError
from blobstore.holders import RendezvousHolders
from blobstore.messages import PutShard, PutShardReply
from blobstore.reader import read_all
from blobstore.service import PROTOCOL, ShardService, TransportShardClient
from blobstore.shardstore import AsyncShardStore, ShardStore
from blobstore.writer import WriterConfig, write_object
from meshcloud.testing import TestMesh
from meshcloud.transport.base import request
from meshcloud.transport.memory import MemoryNetwork
from tests.blobstore.fakes import source


@pytest.fixture
def clock():
    """Autojump, but only after 50 ms of real idleness: LMDB work runs in worker threads,
    which trio cannot see, and a zero threshold would jump virtual time (and fire shard
    timeouts) while a thread is still busy."""
    return MockClock(autojump_threshold=0.05)


@pytest.fixture
async def mesh(nursery, tmp_path):
    members = TestMesh.with_members(7).members
    network = MemoryNetwork()
    nodes = []
    stores = []
    for i, member in enumerate(members):
        transport = network.add(member.key, member.authenticator)
        store = ShardStore(tmp_path / f"n{i}", map_size=8 << 20, min_free_bytes=0,
                           sync=False)  # fsync per put is durability, not behaviour
        stores.append(store)
        service = ShardService(AsyncShardStore(store))
        service.register(transport)
        await nursery.start(transport.run)
        nodes.append((transport, store, service))
    for transport, _, _ in nodes:
        for other, _, _ in nodes:
            if other is not transport:
                transport.set_addresses(other.local_id, other.listen_addresses)
    yield network, nodes
    for store in stores:
        store.close()


async def test_write_and_read_across_nodes_survive_two_crashes(mesh, clock):
    network, nodes = mesh
    first, first_store, _ = nodes[0]
    client = TransportShardClient(first, AsyncShardStore(first_store))
    ids = [t.local_id for t, _, _ in nodes]
    data = random.Random(1).randbytes(50_000)
    manifest = await write_object(source(data, 4096), client=client,
                                  picker=RendezvousHolders(ids), code=ZfecCode(4, 2),
                                  config=WriterConfig(chunk_size=16384))
    stored = sum(store.stats().count for _, store, _ in nodes)
    assert stored == len(manifest.chunks) * 6
    assert await read_all(manifest, client) == data
    holders = sorted({r.node for _, r in manifest.shard_refs()} - {first.local_id})
    for node in holders[:2]:
        network.crash(node)
    bad = []
    start = trio.current_time()
    with trio.fail_after(120):
        got = await read_all(manifest, client, start=1000, end=40_000, on_bad_shard=bad.append)
    assert got == data[1000:40_000]
    # Each dead holder costs one dial timeout per read, not one per chunk.
    assert {b.ref.node for b in bad} <= set(holders[:2])
    assert len(bad) <= 2 and trio.current_time() - start < 2 * 3.0 + 1


async def test_holder_refuses_forged_and_oversize_shards(mesh, clock):
    _, nodes = mesh
    (a, _, _), (b, b_store, b_service) = nodes[0], nodes[1]
    client = TransportShardClient(a)
    with pytest.raises(IntegrityError):
        await client.put_shard(b.local_id, bytes(32), b"not a shard")
    reply = await request(a, b.local_id, PROTOCOL, PutShard(shard_id=bytes(32), blob=b"x"),
                          PutShardReply)
    assert not reply.ok and reply.code == "integrity_error"
    assert b_store.stats().count == 0 and b_service.refused == 2
    with pytest.raises(ShardNotFound):
        await client.get_shard(b.local_id, bytes(32))


async def test_full_holder_is_reported_as_store_full(mesh, clock):
    _, nodes = mesh
    (a, _, _), (b, b_store, _) = nodes[0], nodes[1]
    b_store.min_free_bytes = 1 << 62  # the disk is "full"
    from tests.blobstore.test_shardstore import blob

    shard = blob(100)
    from blobstore.shards import shard_id

    with pytest.raises(StoreFullError):
        await TransportShardClient(a).put_shard(b.local_id, shard_id(shard), shard)


async def test_reading_after_too_many_crashes_fails_cleanly(mesh, clock):
    network, nodes = mesh
    first, first_store, _ = nodes[0]
    client = TransportShardClient(first, AsyncShardStore(first_store))
    ids = [t.local_id for t, _, _ in nodes]
    manifest = await write_object(source(b"q" * 5000), client=client,
                                  picker=RendezvousHolders(ids), code=ZfecCode(4, 2))
    holders = sorted({r.node for _, r in manifest.shard_refs()} - {first.local_id})
    for node in holders[:3]:
        network.crash(node)
    with trio.fail_after(120), pytest.raises(NotEnoughShards):
        await read_all(manifest, client)
