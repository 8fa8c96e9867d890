"""Target layouts (sans-IO planner) and re-encoding an object to another code."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.erasure import ReplicationCode, Scheme, ZfecCode, choose_code
from blobstore.errors import NotEnoughShards
from blobstore.holders import RendezvousHolders
from blobstore.layout import (
    code_key,
    code_text,
    goal_code,
    make_code,
    plan_layout,
    reachable_code,
)
from blobstore.reader import read_all
from blobstore.reencode import reencode_object
from blobstore.writer import WriterConfig, write_object
from tests.blobstore.fakes import MemoryShardClient, node, source

NODES = [node(i) for i in range(1, 9)]
DATA = bytes(range(256)) * 9  # 2,304 bytes: four chunks of 700 and a short one
WRITER = WriterConfig(chunk_size=700)


async def put(client, nodes, code, data=DATA):
    return await write_object(source(data), client=client, picker=RendezvousHolders(nodes),
                              code=code, config=WRITER)


def plan(manifest, mesh_size, live, explicit=None):
    return plan_layout(manifest, goal_code(explicit, mesh_size),
                       reachable_code(explicit, len(live)), live)


async def test_two_copies_wait_for_the_third_node_then_become_three():
    client = MemoryShardClient(NODES[:3])
    manifest = await put(client, NODES[:2], ReplicationCode(2))  # written with one node down
    during = plan(manifest, 3, NODES[:2])
    assert not during.at_target and during.waiting and during.reencode is None
    after = plan(manifest, 3, NODES[:3])
    assert not after.at_target and not after.waiting
    assert after.reencode == code_key(ReplicationCode(3))


async def test_three_copies_become_4_plus_2_once_six_nodes_are_live():
    client = MemoryShardClient(NODES[:6])
    manifest = await put(client, NODES[:4], ReplicationCode(3))  # two of six down
    assert plan(manifest, 6, NODES[:4]).waiting
    assert plan(manifest, 6, NODES[:5]).waiting  # five cannot hold 4+2; r3 is already r3
    assert plan(manifest, 6, NODES[:6]).reencode == code_key(ZfecCode(4, 2))


async def test_two_copies_rise_to_three_while_a_big_mesh_waits_for_4_plus_2():
    client = MemoryShardClient(NODES[:6])
    manifest = await put(client, NODES[:2], ReplicationCode(2))
    step = plan(manifest, 6, NODES[:4])
    assert step.reencode == code_key(ReplicationCode(3)) and not step.at_target


async def test_complete_object_at_goal_is_at_target_and_a_missing_holder_is_not():
    client = MemoryShardClient(NODES[:6])
    manifest = await put(client, NODES[:6], ZfecCode(4, 2))
    ok = plan(manifest, 6, NODES[:6])
    assert ok.at_target and ok.reencode is None and not ok.waiting
    down = plan(manifest, 6, NODES[1:6])
    assert not down.at_target and down.reencode is None  # repair's business, not a re-encode


async def test_a_smaller_view_never_makes_an_object_weaker_or_costlier():
    client = MemoryShardClient(NODES[:6])
    big = await put(client, NODES[:6], ZfecCode(4, 2))
    assert plan(big, 5, NODES[:5]).reencode is None  # not to three copies (3x storage)
    assert plan(big, 5, NODES[:6]).at_target
    three = await put(client, NODES[:3], ReplicationCode(3))
    # a node just started sees two members: its goal is two copies; nothing moves
    view = plan(three, 2, NODES[:2])
    assert view.reencode is None and not view.waiting  # repair's business only


async def test_explicit_bucket_code_is_the_goal_and_inline_objects_are_at_target():
    client = MemoryShardClient(NODES[:6])
    manifest = await put(client, NODES[:6], ZfecCode(4, 2))
    r2 = await put(client, NODES[:2], ReplicationCode(2))
    explicit = ReplicationCode(3)
    assert plan(r2, 6, NODES[:6], explicit).reencode == code_key(explicit)
    assert plan(r2, 6, NODES[:2], explicit).waiting
    assert plan_layout(manifest, ReplicationCode(3), None, NODES[:6], inline=True).at_target


CODES = [ReplicationCode(1), ReplicationCode(2), ReplicationCode(3), ZfecCode(4, 2)]


@settings(max_examples=200, deadline=None)
@given(current=st.sampled_from(CODES), mesh=st.integers(1, 8), live=st.integers(1, 8),
       explicit=st.sampled_from([None, *CODES]))
def test_planner_never_weakens_and_only_targets_what_live_nodes_hold(current, mesh, live,
                                                                     explicit):
    async def main():
        live_nodes = NODES[:live]
        client = MemoryShardClient(NODES)
        manifest = await put(client, NODES[:max(current.n, 1)], current)
        goal = goal_code(explicit, max(mesh, live))
        result = plan_layout(manifest, goal, reachable_code(explicit, live), live_nodes)
        assert result.goal == code_key(goal)
        if result.reencode is not None:
            target = make_code(result.reencode)
            assert target.n <= live  # the live nodes can hold it now
            # more losses survived than today, or as many for less storage
            assert target.m > current.m or (
                target.m == current.m and target.n / target.k < current.n / current.k)
            assert not result.at_target and not result.waiting
        if result.at_target:
            assert current.m >= goal.m
        if result.waiting:
            assert not result.at_target and result.reencode is None

    trio.run(main)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 3)), min_size=1,
                      max_size=6))
def test_simulated_outages_end_with_every_object_at_its_goal(sizes):
    """Objects written with whatever code the live nodes allowed at the time, through a
    series of outages; once all nodes are back, repeated planning + re-encoding reaches
    the goal for every object, and every object still reads back exactly."""

    async def main():
        client = MemoryShardClient(NODES)
        mesh = len(NODES)
        objects = []
        for i, (live_count, _) in enumerate(sizes):
            live = NODES[:live_count]
            data = bytes([i]) * (300 + 400 * i)
            manifest = await put(client, live, choose_code(live_count), data)
            objects.append((manifest, data))
        for _round in range(3):
            for j, (manifest, data) in enumerate(objects):
                result = plan(manifest, mesh, NODES)
                if result.reencode is not None:
                    manifest = await reencode_object(
                        manifest, make_code(result.reencode), client=client,
                        picker=RendezvousHolders(NODES), writer=WRITER)
                    objects[j] = (manifest, data)
        for manifest, data in objects:
            assert plan(manifest, mesh, NODES).at_target
            assert code_key(choose_code(mesh)) == (manifest.scheme, manifest.k, manifest.m)
            assert await read_all(manifest, client) == data

    trio.run(main)


async def test_reencode_keeps_the_bytes_and_spreads_the_new_code_over_distinct_nodes():
    client = MemoryShardClient(NODES)
    old = await put(client, NODES[:3], ReplicationCode(3))
    before = {n: dict(s) for n, s in client.stores.items()}
    gone = old.chunks[0].shards[0].node
    client.down.add(gone)  # one old holder gone: any k will do
    new = await reencode_object(old, ZfecCode(4, 2), client=client,
                                picker=RendezvousHolders([n for n in NODES if n != gone]),
                                writer=WRITER)
    client.down.clear()
    assert (new.scheme, new.k, new.m) == (Scheme.ZFEC, 4, 2)
    assert new.object_id == old.object_id and new.key == old.key and new.size == old.size
    assert [c.index for c in new.chunks] == [c.index for c in old.chunks]
    for chunk in new.chunks:
        assert sorted(s.index for s in chunk.shards) == list(range(6))
        assert len(chunk.holders()) == 6
    assert await read_all(new, client) == DATA
    # the old layout is untouched (GC drops it once the index points at the new one)
    for n, shards in before.items():
        assert shards.items() <= client.stores[n].items()
    assert await read_all(old, client) == DATA
    assert code_text((new.scheme, new.k, new.m)) == "4+2"


async def test_reencode_of_an_unreadable_chunk_fails_and_returns_nothing():
    client = MemoryShardClient(NODES)
    old = await put(client, NODES[:2], ReplicationCode(2))
    client.down |= set(NODES[:2])
    with pytest.raises(NotEnoughShards):
        await reencode_object(old, ReplicationCode(3), client=client,
                              picker=RendezvousHolders(NODES[2:]), writer=WRITER)
