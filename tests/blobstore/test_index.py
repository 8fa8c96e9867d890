"""The object index: quorum writes and reads, read repair, refusals, listings with long keys,
on real state drivers over the in-memory transport under a virtual clock."""

from __future__ import annotations

import random

import pytest
import trio

from blobstore.bucketlist import list_bucket
from blobstore.errors import IndexUnavailable
from blobstore.index import INDEX_PROTOCOL, Index, IndexService
from blobstore.messages import IndexWrite, IndexWriteReply
from blobstore.records import BLOBREFS, OBJECTS, BlobRef, open_tables
from blobstore.s3.listing import After, Position, SortedKeys, list_page
from blobstore.sortkeys import FOLD_AT, sort_key
from meshcloud.state.config import local
from meshcloud.state.driver import StateDriver
from meshcloud.state.keys import encode_key
from meshcloud.state.kv import MemoryKv
from meshcloud.testing import TestMesh
from meshcloud.transport.base import request
from meshcloud.transport.memory import MemoryNetwork
from tests.blobstore.test_records import record_for

BUCKET = b"B" * 16


async def start(nursery, n=5, view: list | None = None):
    """``view``: a list the nodes read their live view from (filled with every id), so
    a test can take members out of it as membership would."""
    mesh = TestMesh.with_members(n)
    network = MemoryNetwork(seed=1, latency=0.002)
    transports = [network.add(m.key, m.authenticator) for m in mesh.members]
    ids = [t.local_id for t in transports]
    if view is not None:
        view[:] = ids
        ids = view
    for t in transports:
        for other in transports:
            if other is not t:
                t.set_addresses(other.local_id, other.listen_addresses)
        await nursery.start(t.run)
    indexes = []
    for i, t in enumerate(transports):
        state = StateDriver(t, MemoryKv(), lambda: ids, config=local(),
                            rng=random.Random(i))
        open_tables(state)
        await nursery.start(state.run)
        service = IndexService(state)
        service.register(t)
        index = Index(t, state, service, lambda: ids, timeout=1.0)
        indexes.append(index)
    return network, indexes


def local_value(index: Index, key):
    return index.state.get(OBJECTS.name, key)


async def test_write_lands_on_a_quorum_and_any_node_reads_it(nursery, autojump_clock):
    _network, indexes = await start(nursery)
    key = (BUCKET, sort_key("a/b"))
    holders = indexes[0].holders(OBJECTS.name, (BUCKET,))
    assert len(holders) == 3
    writer = next(ix for ix in indexes if ix.me not in holders)
    await writer.put(OBJECTS.name, key, record_for("a/b"))
    await trio.sleep(1)
    stored = [ix for ix in indexes if local_value(ix, key) is not None]
    assert {ix.me for ix in stored} == set(holders)  # only holders store, all of them
    for ix in indexes:
        found = await ix.get(OBJECTS.name, key)
        assert found is not None and found.value.key == "a/b"


async def test_one_holder_down_write_succeeds_and_read_repair_fixes_it(nursery, autojump_clock):
    network, indexes = await start(nursery)
    key = (BUCKET, sort_key("k"))
    holders = indexes[0].holders(OBJECTS.name, (BUCKET,))
    by_id = {ix.me: ix for ix in indexes}
    network.crash(holders[2])
    client = next(ix for ix in indexes if ix.me not in holders)
    await client.put(OBJECTS.name, key, record_for("k"))
    assert local_value(by_id[holders[2]], key) is None
    network.revive(holders[2])
    await trio.sleep(0.1)
    network.crash(holders[0])  # the read quorum must now include the stale holder
    found = await client.get(OBJECTS.name, key)
    assert found is not None and found.value.key == "k"
    await trio.sleep(2)
    assert local_value(by_id[holders[2]], key) is not None
    assert client.read_repairs >= 1


async def test_two_holders_down_write_fails(nursery, autojump_clock):
    network, indexes = await start(nursery)
    holders = indexes[0].holders(OBJECTS.name, (BUCKET,))
    network.crash(holders[0])
    network.crash(holders[1])
    client = next(ix for ix in indexes if ix.me not in holders)
    with pytest.raises(IndexUnavailable):
        await client.put(OBJECTS.name, (BUCKET, b"x"), record_for("x"))
    with pytest.raises(IndexUnavailable):
        await client.get(OBJECTS.name, (BUCKET, b"x"))


async def test_newer_write_beats_older_and_delete_is_a_tombstone(nursery, autojump_clock):
    _network, indexes = await start(nursery)
    key = (BUCKET, sort_key("k"))
    await indexes[0].put(OBJECTS.name, key, record_for("k", size=1))
    await indexes[1].put(OBJECTS.name, key, record_for("k", size=2))
    assert (await indexes[3].get(OBJECTS.name, key)).value.modified_ms == 2
    await indexes[2].put(OBJECTS.name, key, None)
    found = await indexes[4].get(OBJECTS.name, key)
    assert found is not None and found.value is None


async def test_repaired_record_beats_its_original_but_not_a_newer_write(nursery, autojump_clock):
    _network, indexes = await start(nursery)
    key = (BUCKET, sort_key("k"))
    await indexes[0].put(OBJECTS.name, key, record_for("k", size=1))
    found = await indexes[1].get(OBJECTS.name, key)
    repaired = record_for("k", size=1, generation=1, tag=b"r")
    await indexes[2].put(OBJECTS.name, key, repaired, ts=found.entry.ts,
                         writer=found.entry.writer)
    assert (await indexes[3].get(OBJECTS.name, key)).value.generation == 1
    # a client overwrite made before the repair landed (older HLC than the repair's
    # write time, newer than the original) still wins
    await indexes[4].put(OBJECTS.name, key, record_for("k", size=7))
    await indexes[2].put(OBJECTS.name, key, record_for("k", size=1, generation=2),
                         ts=found.entry.ts, writer=found.entry.writer)
    assert (await indexes[0].get(OBJECTS.name, key)).value.modified_ms == 7


async def test_holder_refuses_malformed_entries_and_unknown_tables(nursery, autojump_clock):
    _network, indexes = await start(nursery)
    target = indexes[1]
    bad = IndexWrite(table=OBJECTS.name,
                     entries=((encode_key((BUCKET, b"k")), b"\x83\x01\x02\x03"),))
    reply = await request(indexes[0].transport, target.me, INDEX_PROTOCOL, bad,
                          IndexWriteReply)
    assert not reply.ok
    assert target.state.scan(OBJECTS.name) == []
    reply = await request(indexes[0].transport, target.me, INDEX_PROTOCOL,
                          IndexWrite(table="nodes", entries=()), IndexWriteReply)
    assert not reply.ok and "no index table" in reply.error


async def test_blobref_round_trip(nursery, autojump_clock):
    _network, indexes = await start(nursery)
    oid = b"o" * 16
    await indexes[0].put(BLOBREFS.name, (oid,), BlobRef(bucket_id=BUCKET, sort_key=b"k"))
    assert await indexes[3].get_value(BLOBREFS.name, (oid,)) == \
        BlobRef(bucket_id=BUCKET, sort_key=b"k")


LONG = "p" * (FOLD_AT + 10)


@pytest.mark.parametrize("batch", [2, 1000])
async def test_listing_pages_match_a_sorted_list_including_long_keys(nursery, autojump_clock,
                                                                     batch, monkeypatch):
    _network, indexes = await start(nursery)
    names = ["a", "a/1", "a/2", "b", "b/x/1", "b/x/2", "c", LONG + "zz", LONG + "a",
             LONG + "m/1", LONG + "m/2", "p" * FOLD_AT, "q" * 1000, "é", "z/0"]
    for name in names:
        await indexes[0].put(OBJECTS.name, (BUCKET, sort_key(name)), record_for(name))
    await indexes[0].put(OBJECTS.name, (BUCKET, sort_key("gone")), None)
    import blobstore.bucketlist as bl

    original = bl.BucketLister.__init__

    def small(self, index, bucket_id, *, batch_=batch):
        original(self, index, bucket_id, batch=batch_)

    monkeypatch.setattr(bl.BucketLister, "__init__", small)
    reference = SortedKeys((n, n) for n in names)
    for prefix, delimiter in [("", None), ("", "/"), ("b/", "/"), (LONG, "/"), ("p", None)]:
        for max_keys in (1, 3, 1000):
            want = list_page(reference, prefix=prefix, delimiter=delimiter, max_keys=max_keys)
            got = await list_bucket(indexes[2], BUCKET, prefix=prefix, delimiter=delimiter,
                                    max_keys=max_keys)
            assert [k for k, _ in got.contents] == [k for k, _ in want.contents]
            assert got.common_prefixes == want.common_prefixes
            assert got.is_truncated == want.is_truncated
    # resuming after each key walks the whole bucket in S3 order
    seen, after = [], None
    while True:
        page = await list_bucket(indexes[1], BUCKET, max_keys=2, after=after)
        seen += [k for k, _ in page.contents]
        if not page.is_truncated:
            break
        after = Position(After.KEY, seen[-1])
    assert seen == sorted(names, key=lambda s: s.encode())


async def test_after_two_holders_die_two_empty_new_holders_do_not_outvote_the_third(
        nursery, autojump_clock):
    view: list = []
    network, indexes = await start(nursery, n=6, view=view)
    by_id = {ix.me: ix for ix in indexes}
    key = (BUCKET, sort_key("kept"))
    old = indexes[0].holders(OBJECTS.name, (BUCKET,))
    client = next(ix for ix in indexes if ix.me not in old)
    await client.put(OBJECTS.name, key, record_for("kept"))
    await client.put(OBJECTS.name, (BUCKET, sort_key("also")), record_for("also"))
    await trio.sleep(1)
    assert all(local_value(by_id[h], key) is not None for h in old)
    for dead in old[:2]:  # two of the three holders die and leave the live view
        network.crash(dead)
        view.remove(dead)
    new = client.holders(OBJECTS.name, (BUCKET,))
    assert old[2] in new and len(set(new) - set(old)) == 2
    survivor = by_id[old[2]]
    serve = survivor.service.handle

    async def slow(stream):  # the old holder answers last
        await trio.sleep(0.5)
        await serve(stream)

    survivor.transport.registry.handlers[INDEX_PROTOCOL] = slow
    reader = next(ix for ix in indexes if ix.me not in old and ix.me not in new)
    reader.nursery = nursery  # as on a node: a call returns at its quorum
    found = await reader.get(OBJECTS.name, key)
    assert found is not None and found.value.key == "kept"
    # read repair gave the new holders "kept" but not "also": their pages agree, wrongly
    await trio.sleep(1)
    rows, _ = await reader.scan(OBJECTS.name, (BUCKET,), b"", None)
    assert sorted(r.value.key for r in rows if r.value is not None) == ["also", "kept"]


async def test_a_single_holders_read_is_merged_once_and_not_repaired(
        nursery, autojump_clock, monkeypatch):
    """With one copy (a 1-node mesh) a read has nothing to repair: its reply is decoded
    and merged once, for the answer (the small-object GET path)."""
    import blobstore.index as index_module

    _network, (index,) = await start(nursery, n=1)
    key = (BUCKET, sort_key("solo"))
    await index.put(OBJECTS.name, key, record_for("solo"))
    merges = []
    real = index_module._merge

    def counting(core, replies):
        merges.append(len(replies))
        return real(core, replies)

    monkeypatch.setattr(index_module, "_merge", counting)
    found = await index.get(OBJECTS.name, key)
    await trio.sleep(1)  # a read repair would run meanwhile
    assert found is not None and found.value.key == "solo"
    assert merges == [1] and index.read_repairs == 0
