"""Index records and folded sort keys."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.erasure import Scheme
from blobstore.manifest import Manifest
from blobstore.records import OBJECTS, AccessKeyRecord, ObjectRecord
from blobstore.sortkeys import FOLD_AT, scan_start, sort_key, unfold_sorted
from meshcloud.state.crdt import LwwRegister
from meshcloud.state.keys import MAX_KEY_BYTES


def record_for(key: str, *, size: int = 0, generation: int = 0, tag: bytes = b"") -> ObjectRecord:
    manifest = Manifest(object_id=(b"o" + tag)[:16].ljust(16, b"o"), size=0,
                        etag="d41d8cd98f00b204e9800998ecf8427e", scheme=Scheme.REPLICATION,
                        k=1, m=2, key=b"k" * 32, chunks=())
    return ObjectRecord(generation=generation, key=key, manifest=manifest,
                        metadata={"x-amz-meta-size": str(size)}, modified_ms=size)



def test_generation_orders_a_rewrite_at_the_same_stamp():
    encode = OBJECTS.encode
    first = LwwRegister.write(10, b"w", encode(record_for("k", generation=1)))
    later = LwwRegister.write(10, b"w", encode(record_for("k", generation=2)))
    assert first.merge(later) == later == later.merge(first)
    newer = LwwRegister.write(11, b"w", encode(record_for("k", generation=0)))
    assert later.merge(newer) == newer


def test_access_key_grants():
    key = AccessKeyRecord(name="n", secret="s", created_ms=0,
                          buckets={"photos": "read", "*": "write"})
    assert key.allows("photos", "read") and key.allows("photos", "write")
    assert key.allows("other", "write") and not key.allows("other", "read")
    only = AccessKeyRecord(name="n", secret="s", created_ms=0, buckets={"a": "read"})
    assert not only.allows("b", "read") and not only.can_see("b") and only.can_see("a")


keys = st.text(alphabet=st.sampled_from("ab/é\u4e2d"), min_size=1, max_size=600)


@settings(max_examples=150, deadline=None)
@given(st.lists(keys, min_size=1, max_size=30, unique=True))
def test_folded_keys_fit_and_unfold_to_s3_order(names):
    long_prefix = "x" * FOLD_AT
    names = names + [long_prefix + n for n in names[:5]]
    for name in names:
        sk = sort_key(name)
        assert len(b"\x01" + b"\x01" * 18 + b"\x01" + sk.replace(b"\x00", b"\x00\xff")
                   + b"\x00") <= MAX_KEY_BYTES
    rows = sorted((sort_key(n), n) for n in names)
    ordered = [n for _, n in unfold_sorted(rows, lambda n: n)]
    assert ordered == sorted(names, key=lambda n: n.encode())
    assert len({sort_key(n) for n in names}) == len(names)
    for name in names:
        start = scan_start(name)
        assert all(sort_key(m) >= start for m in names if m.encode() >= name.encode())
