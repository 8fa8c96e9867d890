"""RepairPlanner (sans-IO) and rebuild_chunk over the in-memory mesh."""

from __future__ import annotations

import random

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.erasure import ReplicationCode, ZfecCode
from blobstore.holders import RendezvousHolders
from blobstore.manifest import Manifest, ShardRef
from blobstore.reader import read_all
from blobstore.rebuild import rebuild_chunk
from blobstore.repair import RepairPlanner
from blobstore.writer import WriterConfig, write_object
from tests.blobstore.fakes import MemoryShardClient, node, source

NODES = [node(i) for i in range(1, 11)]


async def put(client, data, code=None, nodes=NODES) -> Manifest:
    return await write_object(source(data), client=client, picker=RendezvousHolders(nodes),
                              code=code or ZfecCode(4, 2),
                              config=WriterConfig(chunk_size=700))


async def repair_all(manifest, client, live, bad=()):
    planner = RepairPlanner(RendezvousHolders(live))
    plan = planner.plan([manifest], live, bad)
    for task in plan.rebuild:
        rebuilt = await rebuild_chunk(task, client)
        manifest = task.apply(manifest, rebuilt)
    return manifest, plan


@settings(max_examples=20, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 2**16),
       lost=st.integers(1, 2), replicate=st.booleans())
def test_repair_restores_k_plus_m_shards_on_distinct_live_nodes(data, seed, lost, replicate):
    async def main():
        client = MemoryShardClient(NODES)
        code = ReplicationCode(3) if replicate else ZfecCode(4, 2)
        manifest = await put(client, data, code)
        holders = sorted({r.node for _, r in manifest.shard_refs()})
        dead = set(random.Random(seed).sample(holders, lost))
        client.down |= dead
        live = [n for n in NODES if n not in dead]
        repaired, plan = await repair_all(manifest, client, live)
        assert not plan.lost
        for chunk in repaired.chunks:
            assert sorted(s.index for s in chunk.shards) == list(range(code.n))
            assert len(chunk.holders()) == code.n
            assert not chunk.holders() & dead
            # Rebuilt shards are byte-identical: ids unchanged.
            before = {s.index: s.shard_id for s in manifest.chunks[
                [c.index for c in manifest.chunks].index(chunk.index)].shards}
            assert {s.index: s.shard_id for s in chunk.shards} == before
        # Now any m *more* holders may go and the object is still readable.
        now_holding = sorted({r.node for _, r in repaired.shard_refs()})
        client.down |= set(random.Random(seed + 1).sample(now_holding, code.m))
        assert await read_all(repaired, client) == data
        # And a second plan finds nothing to do.
        assert RepairPlanner(RendezvousHolders(live)).plan([repaired], live).healthy

    trio.run(main)


async def test_after_repair_the_object_survives_m_further_losses():
    client = MemoryShardClient(NODES)
    data = random.Random(1).randbytes(2000)
    manifest = await put(client, data)
    first = manifest.chunks[0].shards
    dead = {first[0].node, first[1].node}
    client.down |= dead
    live = [n for n in NODES if n not in dead]
    repaired, _ = await repair_all(manifest, client, live)
    # Two more holders of chunk 0 die.
    more = {s.node for s in repaired.chunks[0].shards[2:4]}
    client.down |= more
    assert await read_all(repaired, client) == data


def manifest_on(nodes_per_chunk: list[list[bytes]], k=4, m=2) -> Manifest:
    from blobstore.crypto import SEAL_OVERHEAD
    from blobstore.erasure import Scheme
    from blobstore.manifest import ChunkRef

    chunks = tuple(
        ChunkRef(index=c, length=10, sealed_length=10 + SEAL_OVERHEAD, shards=tuple(
            ShardRef(index=i, shard_id=bytes([c, i]) * 16, node=n)
            for i, n in enumerate(holders)))
        for c, holders in enumerate(nodes_per_chunk)
    )
    return Manifest(object_id=b"o" * 16, size=10 * len(chunks), etag="e",
                    scheme=Scheme.ZFEC, k=k, m=m, key=bytes(32), chunks=chunks)


def test_plan_lists_lost_chunks_and_orders_by_risk():
    n = NODES
    manifest = manifest_on([
        [n[0], n[3], n[4], n[5], n[6], n[7]],  # chunk 0: loses 1
        [n[0], n[1], n[2], n[6], n[7], n[8]],  # chunk 1: loses 3 -> lost
        [n[0], n[1], n[3], n[4], n[5], n[9]],  # chunk 2: loses 2 -> most urgent
    ])
    live = [x for x in n if x not in {n[0], n[1], n[2]}]
    plan = RepairPlanner(RendezvousHolders(live)).plan([manifest], live)
    assert [(c.chunk_index, c.surviving) for c in plan.lost] == [(1, 3)]
    assert [t.chunk.index for t in plan.rebuild] == [2, 0]
    task2, task0 = plan.rebuild
    assert (task2.spare, task0.spare) == (0, 1)
    assert [i for i, _ in task2.targets] == [0, 1]
    assert [i for i, _ in task0.targets] == [0]
    for task in plan.rebuild:
        holders = {s.node for s in task.sources}
        targets = [node for _, node in task.targets]
        assert len(set(targets)) == len(targets)
        assert not set(targets) & holders
        assert set(targets) <= set(live)


def test_two_shards_on_one_node_are_spread_out():
    n = NODES
    manifest = manifest_on([[n[0], n[1], n[2], n[3], n[4], n[4]]])
    plan = RepairPlanner(RendezvousHolders(n)).plan([manifest], n)
    (task,) = plan.rebuild
    assert [i for i, _ in task.targets] == [5]
    assert task.targets[0][1] not in {n[0], n[1], n[2], n[3], n[4]}


def test_known_bad_shards_are_rebuilt_even_on_live_nodes():
    n = NODES
    manifest = manifest_on([n[0:6]])
    bad_ref = manifest.chunks[0].shards[3]
    plan = RepairPlanner(RendezvousHolders(n)).plan([manifest], n,
                                                     bad={(bad_ref.node, bad_ref.shard_id)})
    (task,) = plan.rebuild
    assert [i for i, _ in task.targets] == [3]
    assert bad_ref.node not in {s.node for s in task.sources}


def test_too_few_live_nodes_gives_a_short_plan():
    n = NODES
    manifest = manifest_on([n[0:6]])
    live = n[1:6]  # 5 live nodes, all already holders
    plan = RepairPlanner(RendezvousHolders(live)).plan([manifest], live)
    assert plan.rebuild == [] and len(plan.short) == 1


def test_healthy_manifest_needs_nothing():
    manifest = manifest_on([NODES[0:6], NODES[2:8]])
    assert RepairPlanner(RendezvousHolders(NODES)).plan([manifest], NODES).healthy


async def test_rebuild_skips_targets_that_refuse():
    client = MemoryShardClient(NODES)
    manifest = await put(client, b"q" * 600)
    dead = manifest.chunks[0].shards[5].node
    client.down.add(dead)
    live = [x for x in NODES if x != dead]
    plan = RepairPlanner(RendezvousHolders(live)).plan([manifest], live)
    (task,) = plan.rebuild
    client.full.add(task.targets[0][1])
    assert await rebuild_chunk(task, client) == []


async def test_repair_reads_no_shard_from_a_metered_node_while_others_suffice():
    client = MemoryShardClient(NODES)
    manifest = await put(client, bytes(range(256)) * 2)  # one chunk of 4 + 2 shards
    assert len(manifest.chunks) == 1
    chunk = manifest.chunks[0]
    holders = [r.node for r in sorted(chunk.shards, key=lambda r: r.index)]
    dead, metered = holders[0], holders[1]  # a data shard's holder is metered
    client.down.add(dead)
    live = [n for n in NODES if n != dead]
    task = RepairPlanner(RendezvousHolders(live)).plan([manifest], live).rebuild[0]
    read_from: list[bytes] = []
    fetch = client.get_shard

    async def counting(n: bytes, sid: bytes) -> bytes:
        read_from.append(n)
        return await fetch(n, sid)

    client.get_shard = counting
    assert await rebuild_chunk(task, client, avoid=frozenset({metered}))
    assert metered not in read_from and len(read_from) == 4
    # with one more holder gone, the metered node's shard is needed: read after all
    read_from.clear()
    client.down.add(holders[2])
    task = RepairPlanner(RendezvousHolders(live)).plan(
        [manifest], [n for n in live if n != holders[2]]).rebuild[0]
    assert await rebuild_chunk(task, client, avoid=frozenset({metered}))
    assert metered in read_from
