"""A user's bucket created on two nodes at once (two S3 CreateBucket calls at the same
moment, or on both sides of a partition): the two bucket rows merge to one, and every
object written through either node stays readable through every node. A bucket deleted
and created again never shows the objects of its earlier life.

Real object stores, index services and state drivers over the in-memory transport under
a virtual clock (the harness of test_read_your_writes)."""

from __future__ import annotations

import pytest
import trio

from blobstore.bucketlist import list_bucket
from blobstore.objects import bucket_id_for
from blobstore.records import BUCKETS, OBJECTS
from blobstore.s3.errors import BucketAlreadyOwnedByYou, NoSuchBucket, NoSuchKey
from blobstore.sortkeys import sort_key
from tests.blobstore.fakes import source
from tests.blobstore.test_read_your_writes import start


async def _write(node, bucket: str, key: str) -> None:
    body = f"{key} via {bucket}".encode()
    await node.store.put(bucket, key, source(body), size_hint=len(body))


async def _read(node, bucket: str, key: str) -> bytes:
    record = await node.store.head(bucket, key)
    return b"".join([piece async for piece in node.store.read(record)])


async def _keys(node, bucket: str) -> list[str]:
    page = await list_bucket(node.store.index, node.store.bucket(bucket).bucket_id,
                             prefix="", delimiter=None, max_keys=1000)
    return [key for key, _entry in page.contents]


async def test_a_bucket_created_on_two_nodes_at_once_keeps_both_sides_objects(
        nursery, autojump_clock):
    _network, nodes = await start(nursery, 4)

    async def create_and_write(i: int) -> None:
        await nodes[i].store.create_bucket("photos", owner="AKUSER")
        await _write(nodes[i], "photos", f"from-{i}")

    async with trio.open_nursery() as inner:
        inner.start_soon(create_and_write, 0)
        inner.start_soon(create_and_write, 1)
    await trio.sleep(30)  # the two bucket rows merge everywhere (virtual time)
    assert {n.store.bucket("photos").bucket_id for n in nodes} == {bucket_id_for("photos", 0)}
    for reader in nodes:
        for i in (0, 1):
            assert await _read(reader, "photos", f"from-{i}") == f"from-{i} via photos".encode()
        assert await _keys(reader, "photos") == ["from-0", "from-1"]
    with pytest.raises(BucketAlreadyOwnedByYou):  # never a second bucket
        await nodes[2].store.create_bucket("photos", owner="AKUSER")


async def test_a_bucket_created_on_both_sides_of_a_partition_keeps_both_sides_objects(
        nursery, autojump_clock):
    network, nodes = await start(nursery, 4)
    ids = [n.me for n in nodes]
    await trio.sleep(5)  # the nodes' first connections are made (none is half-way at the cut)
    network.partition({ids[0], ids[1]}, {ids[2], ids[3]})
    await trio.sleep(5)  # the connections across the cut die (virtual time)
    await nodes[0].store.create_bucket("logs")
    await nodes[2].store.create_bucket("logs")
    network.heal()
    await _write(nodes[0], "logs", "left")
    await _write(nodes[2], "logs", "right")
    await trio.sleep(30)
    for reader in nodes:
        assert await _keys(reader, "logs") == ["left", "right"]


async def test_a_deleted_bucket_made_again_shows_none_of_its_old_objects(
        nursery, autojump_clock):
    _network, nodes = await start(nursery, 3)
    first = await nodes[0].store.create_bucket("reborn")
    await _write(nodes[0], "reborn", "old")
    old = await nodes[0].store.head("reborn", "old")
    await nodes[0].store.delete("reborn", "old")
    await nodes[0].store.delete_bucket("reborn")
    await trio.sleep(5)
    for node in nodes:
        with pytest.raises(NoSuchBucket):
            node.store.bucket("reborn")
        assert "reborn" not in dict(node.store.buckets())
    # a PUT that raced the deletion left its row under the old id
    await nodes[1].index.put(OBJECTS.name, (first.bucket_id, sort_key("old")), old)

    async def create(i: int) -> None:
        await nodes[i].store.create_bucket("reborn")

    async with trio.open_nursery() as inner:  # made again on two nodes at once
        inner.start_soon(create, 1)
        inner.start_soon(create, 2)
    await trio.sleep(5)
    again = {n.store.bucket("reborn").bucket_id for n in nodes}
    assert again == {bucket_id_for("reborn", 1)} and first.bucket_id not in again
    for node in nodes:
        assert await _keys(node, "reborn") == []
        with pytest.raises(NoSuchKey):
            await node.store.head("reborn", "old")
    row = nodes[0].store.state.get(BUCKETS.name, "reborn")
    assert row.generation == 1
