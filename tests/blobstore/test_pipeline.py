"""writer -> reader round trips over an in-memory mesh of shard stores."""

from __future__ import annotations

import hashlib
import random
from contextlib import aclosing

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.crypto import new_object_key
from blobstore.erasure import ReplicationCode, ZfecCode
from blobstore.errors import IntegrityError, NotEnoughHolders, NotEnoughShards, WriteFailed
from blobstore.fetch import BadShard
from blobstore.holders import RendezvousHolders, placement_key
from blobstore.manifest import Manifest
from blobstore.reader import ReaderConfig, read_all, read_object
from blobstore.writer import WriterConfig, write_object
from tests.blobstore.fakes import MemoryShardClient, node, source

NODES = [node(i) for i in range(1, 9)]
SMALL = WriterConfig(chunk_size=1000, thread_threshold=10**9)


async def put(client, data: bytes, code=None, config=SMALL, **kw) -> Manifest:
    return await write_object(source(data, 333), client=client,
                              picker=RendezvousHolders(NODES), code=code or ZfecCode(4, 2),
                              config=config, **kw)


def holders_of(manifest: Manifest) -> set[bytes]:
    return {ref.node for _, ref in manifest.shard_refs()}


@settings(max_examples=25, deadline=None)
@given(
    data=st.binary(max_size=5000),
    lost=st.integers(0, 2),
    replicate=st.booleans(),
    bounds=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    seed=st.integers(0, 2**16),
)
def test_round_trip_with_up_to_m_holders_down_and_ranges_exact(data, lost, replicate,
                                                               bounds, seed):
    async def main():
        client = MemoryShardClient(NODES)
        code = ReplicationCode(3) if replicate else ZfecCode(4, 2)
        manifest = await put(client, data, code)
        assert manifest.size == len(data)
        assert manifest.etag == hashlib.md5(data).hexdigest()
        for chunk in manifest.chunks:
            assert len(chunk.shards) == code.n
            assert len(chunk.holders()) == code.n  # distinct holders per chunk
        # Take down up to m of the holders of every chunk: pick `lost` nodes per chunk
        # would down too many overall, so down `lost` nodes chosen among all holders and
        # check the chunks still have k.
        rng = random.Random(seed)
        down = set(rng.sample(sorted(holders_of(manifest)), min(lost, len(holders_of(manifest)))))
        client.down |= down
        a = int(bounds[0] * len(data))
        b = int(bounds[1] * len(data))
        start, end = min(a, b), max(a, b)
        bad: list[BadShard] = []
        got = await read_all(manifest, client, start=start, end=end, on_bad_shard=bad.append)
        assert got == data[start:end]
        assert all(not b.corrupt and b.ref.node in down for b in bad)
        assert await read_all(manifest, client) == data

    trio.run(main)


async def test_object_bigger_than_a_chunk_spreads_per_chunk():
    client = MemoryShardClient(NODES)
    data = random.Random(3).randbytes(10_500)
    manifest = await put(client, data)
    assert [c.length for c in manifest.chunks] == [1000] * 10 + [500]
    assert [c.index for c in manifest.chunks] == list(range(11))
    assert client.total_shards() == 11 * 6
    # Different chunks land on different holder sets (placement per chunk).
    assert len({frozenset(c.holders()) for c in manifest.chunks}) > 1
    pieces = []
    async with aclosing(read_object(manifest, client, start=1500, end=3500)) as stream:
        async for piece in stream:
            pieces.append(piece)
    assert [len(p) for p in pieces] == [500, 1000, 500]
    assert b"".join(pieces) == data[1500:3500]


async def test_empty_object():
    client = MemoryShardClient(NODES)
    manifest = await put(client, b"")
    assert (manifest.size, manifest.chunks) == (0, ())
    assert manifest.etag == hashlib.md5(b"").hexdigest()
    assert await read_all(manifest, client) == b""


async def test_reader_skips_corrupt_shards_and_reports_them():
    client = MemoryShardClient(NODES)
    data = random.Random(4).randbytes(3000)
    manifest = await put(client, data)
    chunk = manifest.chunks[1]
    for ref in chunk.shards[:2]:  # two data shards rot
        client.corrupt(ref.node, ref.shard_id)
    bad: list[BadShard] = []
    assert await read_all(manifest, client, on_bad_shard=bad.append) == data
    assert {(b.chunk_index, b.ref.index, b.corrupt) for b in bad} == {(1, 0, True), (1, 1, True)}


async def test_a_shard_swapped_for_another_chunks_shard_is_refused():
    client = MemoryShardClient(NODES)
    manifest = await put(client, random.Random(5).randbytes(2000))
    a, b = manifest.chunks[0].shards[0], manifest.chunks[1].shards[0]
    # A holder answers with a valid shard of another chunk: hashes fine, wrong header.
    client.stores[a.node][a.shard_id] = client.stores[b.node][b.shard_id]
    bad: list[BadShard] = []
    await read_all(manifest, client, on_bad_shard=bad.append)
    assert [x.ref for x in bad] == [a] and bad[0].corrupt


async def test_more_than_m_lost_is_not_enough_shards():
    client = MemoryShardClient(NODES)
    manifest = await put(client, b"x" * 500)
    client.down |= {ref.node for ref in manifest.chunks[0].shards[:3]}
    with pytest.raises(NotEnoughShards, match="chunk 0"):
        await read_all(manifest, client)


async def test_wrong_key_in_manifest_fails_to_open():
    import dataclasses

    client = MemoryShardClient(NODES)
    manifest = await put(client, b"y" * 500)
    forged = dataclasses.replace(manifest, key=new_object_key())
    with pytest.raises(IntegrityError):
        await read_all(forged, client)


async def test_slow_holder_is_replaced_after_the_shard_timeout(autojump_clock):
    client = MemoryShardClient(NODES)
    manifest = await put(client, b"z" * 900)
    slow = manifest.chunks[0].shards[0].node
    original = client.get_shard

    async def get_shard(n, sid):
        if n == slow:
            await trio.sleep(3600)
        return await original(n, sid)

    client.get_shard = get_shard
    start = trio.current_time()
    assert await read_all(manifest, client, config=ReaderConfig(shard_timeout=5)) == b"z" * 900
    assert 5 <= trio.current_time() - start < 6


async def test_writer_moves_to_alternates_when_holders_refuse():
    client = MemoryShardClient(NODES)
    client.full |= {NODES[0], NODES[1]}
    data = random.Random(6).randbytes(4000)
    manifest = await put(client, data)
    assert not holders_of(manifest) & {NODES[0], NODES[1]}
    for chunk in manifest.chunks:
        assert len(chunk.shards) == 6 and len(chunk.holders()) == 6
    assert await read_all(manifest, client) == data


async def test_writer_fails_when_too_few_holders_accept():
    client = MemoryShardClient(NODES)
    client.down |= set(NODES[:4])  # 4 of 8 down: 6 distinct holders impossible
    with pytest.raises(WriteFailed):
        await put(client, b"a" * 3000)


async def test_degraded_write_with_min_shards():
    client = MemoryShardClient(NODES[:6])
    client.down.add(NODES[0])
    picker_nodes = NODES[:6]
    manifest = await write_object(
        source(b"b" * 2500), client=client, picker=RendezvousHolders(picker_nodes),
        code=ZfecCode(4, 2), config=WriterConfig(chunk_size=1000, min_shards=5),
    )
    assert all(len(c.shards) == 5 for c in manifest.chunks)
    assert await read_all(manifest, client) == b"b" * 2500


async def test_not_enough_nodes_for_the_code():
    client = MemoryShardClient(NODES[:3])
    with pytest.raises(NotEnoughHolders):
        await write_object(source(b"c" * 10), client=client,
                           picker=RendezvousHolders(NODES[:3]), code=ZfecCode(4, 2))


class Refused(Exception):
    pass


async def test_a_failing_source_aborts_the_put():
    client = MemoryShardClient(NODES)

    async def bad_source():
        yield b"x" * 2500
        raise Refused("bad digest")

    with pytest.raises(Refused):
        await write_object(bad_source(), client=client, picker=RendezvousHolders(NODES),
                           code=ZfecCode(4, 2), config=SMALL)


async def test_large_chunks_use_worker_threads_and_round_trip():
    client = MemoryShardClient(NODES)
    data = random.Random(7).randbytes(600_000)
    config = WriterConfig(chunk_size=256 * 1024, thread_threshold=1024)
    manifest = await write_object(source(data, 65536), client=client,
                                  picker=RendezvousHolders(NODES), code=ZfecCode(4, 2),
                                  config=config)
    got = await read_all(manifest, client, start=100_000, end=590_000,
                         config=ReaderConfig(thread_threshold=1024))
    assert got == data[100_000:590_000]


async def test_chunk_index_base_and_fixed_key_for_multipart_parts():
    client = MemoryShardClient(NODES)
    key = new_object_key()
    m1 = await put(client, b"p" * 1500, object_id=b"u" * 16, key=key, first_chunk_index=1 << 20)
    assert [c.index for c in m1.chunks] == [1 << 20, (1 << 20) + 1]
    assert m1.key == key and m1.object_id == b"u" * 16
    assert await read_all(m1, client) == b"p" * 1500


async def test_hung_holder_is_replaced_after_the_put_timeout(autojump_clock):
    client = MemoryShardClient(NODES)
    hung = RendezvousHolders(NODES).pick(placement_key(b"h" * 16, 0), 1)[0]
    original = client.put_shard

    async def put_shard(n, sid, blob):
        if n == hung:
            await trio.sleep(10_000)
        await original(n, sid, blob)

    client.put_shard = put_shard
    config = WriterConfig(chunk_size=1000, thread_threshold=10**9, put_timeout=7)
    start = trio.current_time()
    manifest = await put(client, b"w" * 800, config=config, object_id=b"h" * 16)
    assert 7 <= trio.current_time() - start < 8
    assert hung not in holders_of(manifest)
    assert len(manifest.chunks[0].shards) == 6


async def test_a_dead_holder_is_asked_once_per_read_not_once_per_chunk():
    client = MemoryShardClient(NODES)
    data = random.Random(8).randbytes(20_000)
    manifest = await put(client, data)
    dead = NODES[0]
    client.down.add(dead)
    bad: list[BadShard] = []
    assert await read_all(manifest, client, on_bad_shard=bad.append) == data
    chunks_on_dead = sum(1 for c in manifest.chunks if dead in c.holders())
    assert chunks_on_dead > 3
    assert len([b for b in bad if b.ref.node == dead]) == 1


async def test_a_manifest_pointing_at_another_chunks_shard_is_caught_by_the_header():
    """The id matches its bytes, but the header says it belongs elsewhere: skipped."""
    import dataclasses

    client = MemoryShardClient(NODES)
    data = random.Random(10).randbytes(2000)
    manifest = await put(client, data)
    foreign = manifest.chunks[1].shards[0]
    mine = manifest.chunks[0].shards[0]
    client.stores[mine.node][foreign.shard_id] = client.stores[foreign.node][foreign.shard_id]
    forged = manifest.with_shards(0, [dataclasses.replace(mine, shard_id=foreign.shard_id)])
    bad: list[BadShard] = []
    assert await read_all(forged, client, on_bad_shard=bad.append) == data
    assert [(b.chunk_index, b.ref.index, b.corrupt) for b in bad] == [(0, 0, True)]
    assert "foreign header" in bad[0].reason
