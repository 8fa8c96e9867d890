from __future__ import annotations

import hashlib
import random

import pytest

from blobstore.crypto import SEAL_OVERHEAD, new_object_key
from blobstore.erasure import ZfecCode
from blobstore.holders import RendezvousHolders
from blobstore.manifest import ChunkRef, ShardRef
from blobstore.reader import read_all
from blobstore.s3 import errors as e
from blobstore.s3.multipart import (
    MIN_PART_SIZE,
    MultipartUpload,
    Part,
    UploadEntry,
    list_uploads,
    multipart_etag,
    new_upload_id,
    object_id_of_upload,
    parse_part_number,
    part_chunk_base,
    part_range,
)
from blobstore.writer import WriterConfig, write_object
from tests.blobstore.fakes import MemoryShardClient, node, source

MiB = 1024 * 1024


def upload() -> MultipartUpload:
    return MultipartUpload(upload_id=new_upload_id(), bucket="b", key="k",
                           object_id=b"o" * 16, object_key=new_object_key(),
                           scheme=ZfecCode().scheme, k=4, m=2, initiated=0.0)


def fake_part(number: int, size: int, etag: str | None = None) -> Part:
    """A part record with one (fake) chunk of ``size`` bytes."""
    chunk = ChunkRef(index=part_chunk_base(number), length=size,
                     sealed_length=size + SEAL_OVERHEAD,
                     shards=(ShardRef(index=0, shard_id=bytes(32), node=bytes(32)),))
    return Part(number=number, etag=etag or f"{number:032x}", size=size, last_modified=0.0,
                chunks=(chunk,))


def test_s3_multipart_etag_known_value():
    # Two parts "a"*5MiB and "b": md5 of the concatenated binary digests, "-2".
    d1 = hashlib.md5(b"a" * 5 * MiB).hexdigest()
    d2 = hashlib.md5(b"b").hexdigest()
    want = hashlib.md5(bytes.fromhex(d1) + bytes.fromhex(d2)).hexdigest() + "-2"
    assert multipart_etag([d1, d2]) == want


def test_complete_in_order_builds_the_manifest():
    up = upload()
    up.add_part(fake_part(1, MIN_PART_SIZE))
    up.add_part(fake_part(3, 10))
    up.add_part(fake_part(2, MIN_PART_SIZE))
    manifest = up.complete([(1, f'"{1:032x}"'), (3, f"{3:032x}")])
    assert manifest.size == MIN_PART_SIZE + 10
    assert manifest.part_sizes == (MIN_PART_SIZE, 10)
    assert manifest.etag.endswith("-2")
    assert [c.index for c in manifest.chunks] == [part_chunk_base(1), part_chunk_base(3)]
    assert [p.number for p in up.unused_parts([1, 3])] == [2]
    assert part_range(manifest, 2) == (MIN_PART_SIZE, MIN_PART_SIZE + 10)


@pytest.mark.parametrize(("listed", "error"), [
    ([], e.MalformedXML),
    ([(2, "x"), (1, "y")], e.InvalidPartOrder),
    ([(2, f"{2:032x}"), (1, f"{1:032x}")], e.InvalidPartOrder),
    ([(1, "x"), (1, "y")], e.InvalidPart),
    ([(1, f"{1:032x}"), (9, f"{9:032x}")], e.InvalidPart),
    ([(1, "0" * 32)], e.InvalidPart),
    ([(2, f"{2:032x}"), (4, f"{4:032x}")], e.EntityTooSmall),
])
def test_completion_rules(listed, error):
    up = upload()
    up.add_part(fake_part(1, MIN_PART_SIZE))
    up.add_part(fake_part(2, MIN_PART_SIZE - 1))
    up.add_part(fake_part(4, 1))
    with pytest.raises(error):
        up.complete(listed)


def test_reuploading_a_part_replaces_it():
    up = upload()
    old = fake_part(1, 10, "a" * 32)
    up.add_part(old)
    assert up.add_part(fake_part(1, 20, "b" * 32)) == old
    with pytest.raises(e.InvalidPart):
        up.complete([(1, "a" * 32)])
    assert up.complete([(1, "b" * 32)]).size == 20


def test_a_part_listed_twice_stands_for_its_last_upload():
    up = upload()
    up.add_part(fake_part(1, 10, "a" * 32))
    up.add_part(fake_part(1, 20, "b" * 32))  # the part uploaded again
    up.add_part(fake_part(2, 5, "c" * 32))
    for listed in ([(1, "a" * 32), (1, "b" * 32), (2, "c" * 32)],
                   [(1, "b" * 32), (1, "a" * 32), (2, "c" * 32)]):
        manifest = up.complete(listed, min_part_size=1)
        assert manifest.size == 25 and manifest.part_sizes == (20, 5)
        assert manifest.etag.endswith("-2")
    with pytest.raises(e.InvalidPart):
        up.complete([(1, "a" * 32), (1, "a" * 32)])


def test_upload_ids_carry_their_object_id():
    oid = bytes(range(16))
    uid = new_upload_id(oid)
    assert object_id_of_upload(uid) == oid and new_upload_id(oid) != uid
    for other in ("", "x" * 200, "not base64!", new_upload_id()[:-4], "é"):
        assert object_id_of_upload(other) is None


@pytest.mark.parametrize("number", [2, 3, 10000])
def test_a_part_number_past_the_last_part_is_invalid_part(number):
    up = upload()
    up.add_part(fake_part(1, MIN_PART_SIZE))
    up.add_part(fake_part(2, 7))
    manifest = up.complete([(1, f"{1:032x}"), (2, f"{2:032x}")])
    if number == 2:
        assert part_range(manifest, 2) == (MIN_PART_SIZE, MIN_PART_SIZE + 7)
        return
    with pytest.raises(e.InvalidPart) as info:
        part_range(manifest, number)
    assert (info.value.code, info.value.status) == ("InvalidPart", 400)


def test_list_parts_pages():
    up = upload()
    for n in range(1, 8):
        up.add_part(fake_part(n, 1))
    parts, more = up.list_parts(max_parts=3)
    assert [p.number for p in parts] == [1, 2, 3] and more
    parts, more = up.list_parts(marker=6, max_parts=3)
    assert [p.number for p in parts] == [7] and not more


@pytest.mark.parametrize("value", [None, "0", "10001", "-1", "abc", "1" * 30])
def test_bad_part_numbers(value):
    with pytest.raises(e.InvalidArgument):
        parse_part_number(value)


def test_part_chunks_must_sit_in_their_index_range():
    good = fake_part(2, 5)
    with pytest.raises(e.InvalidArgument):
        Part(number=3, etag="x", size=5, last_modified=0, chunks=good.chunks)


def test_list_uploads_paging():
    entries = [UploadEntry("a", "u1", 1), UploadEntry("a", "u2", 2), UploadEntry("b/x", "u3", 1),
               UploadEntry("b/y", "u4", 1), UploadEntry("c", "u5", 1)]
    page = list_uploads(entries, delimiter="/", max_uploads=2)
    assert [u.upload_id for u in page.uploads] == ["u1", "u2"] and page.is_truncated
    page = list_uploads(entries, delimiter="/", key_marker=page.next_key_marker,
                        upload_id_marker=page.next_upload_id_marker, max_uploads=2)
    assert page.common_prefixes == ["b/"] and [u.key for u in page.uploads] == ["c"]
    assert not page.is_truncated


async def test_parts_written_by_the_pipeline_complete_into_a_readable_object():
    nodes = [node(i) for i in range(1, 8)]
    client = MemoryShardClient(nodes)
    up = upload()
    rng = random.Random(9)
    datas = {1: rng.randbytes(3000), 2: rng.randbytes(3000), 3: rng.randbytes(1000)}
    for number in (2, 1, 3):  # parts may arrive in any order
        manifest = await write_object(
            source(datas[number]), client=client, picker=RendezvousHolders(nodes),
            code=ZfecCode(4, 2), config=WriterConfig(chunk_size=1024),
            object_id=up.object_id, key=up.object_key,
            first_chunk_index=part_chunk_base(number))
        up.add_part(Part(number=number, etag=manifest.etag, size=manifest.size,
                         last_modified=0.0, chunks=manifest.chunks))
    final = up.complete([(n, hashlib.md5(datas[n]).hexdigest()) for n in (1, 2, 3)],
                        min_part_size=1000)  # the 5 MiB rule, scaled down
    whole = datas[1] + datas[2] + datas[3]
    assert await read_all(final, client) == whole
    assert await read_all(final, client, start=2500, end=6500) == whole[2500:6500]
