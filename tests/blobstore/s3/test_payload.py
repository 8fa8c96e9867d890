from __future__ import annotations

import base64
import hashlib
import itertools
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.payload import MAX_PUT_SIZE, PayloadCheck, declared_length, parse_content_md5
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import PayloadMode

BODY = b"the body" * 100


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def crc_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def run(check: PayloadCheck, body: bytes = BODY) -> PayloadCheck:
    for i in range(0, len(body), 77):
        check.feed(body[i:i + 77])
    check.finish()
    return check


def test_all_checks_pass_on_the_right_body():
    check = run(PayloadCheck(length=len(BODY), sha256=hashlib.sha256(BODY).hexdigest(),
                             content_md5=parse_content_md5(md5_b64(BODY)),
                             checksums={"x-amz-checksum-crc32": crc_b64(BODY)}))
    assert check.md5_hex == hashlib.md5(BODY).hexdigest()


@pytest.mark.parametrize("value", ["", "abc", "!!!!", base64.b64encode(b"x" * 15).decode(),
                                   base64.b64encode(b"x" * 17).decode()])
def test_malformed_content_md5_is_invalid_digest(value):
    with pytest.raises(e.InvalidDigest) as info:
        parse_content_md5(value)
    assert info.value.status == 400


def test_wrong_content_md5_is_bad_digest():
    with pytest.raises(e.BadDigest):
        run(PayloadCheck(length=len(BODY), content_md5=parse_content_md5(md5_b64(b"x"))))


def test_wrong_sha256_is_xamz_mismatch():
    with pytest.raises(e.ContentSha256Mismatch):
        run(PayloadCheck(length=len(BODY), sha256="0" * 64))


def test_short_and_long_bodies():
    with pytest.raises(e.IncompleteBody):
        run(PayloadCheck(length=len(BODY) + 1))
    with pytest.raises(e.IncompleteBody):
        run(PayloadCheck(length=len(BODY) - 1))


def test_huge_declared_length_refused_before_reading():
    with pytest.raises(e.EntityTooLarge) as info:
        PayloadCheck(length=MAX_PUT_SIZE + 1)
    assert info.value.extra["ProposedSize"] == str(MAX_PUT_SIZE + 1)


def test_undeclared_body_over_the_limit():
    check = PayloadCheck(length=None, max_size=100)
    with pytest.raises(e.EntityTooLarge):
        check.feed(b"x" * 101)


def test_checksum_variants():
    with pytest.raises(e.ChecksumMismatch):
        run(PayloadCheck(checksums={"x-amz-checksum-crc32": crc_b64(b"other")}))
    with pytest.raises(e.InvalidRequest):
        run(PayloadCheck(checksums={"x-amz-checksum-crc32": "not base64!"}))
    with pytest.raises(e.NotImplementedS3):
        PayloadCheck(checksums={"x-amz-checksum-crc32c": "AAAAAA=="})
    with pytest.raises(e.InvalidRequest):
        PayloadCheck(checksums={"x-amz-checksum-crc32": "x", "x-amz-checksum-sha1": "y"})
    sha1 = base64.b64encode(hashlib.sha1(BODY).digest()).decode()
    run(PayloadCheck(checksums={"x-amz-checksum-sha1": sha1}))


def test_trailer_checksum_arrives_at_finish():
    check = PayloadCheck(trailer_names=frozenset({"x-amz-checksum-crc32"}))
    check.feed(BODY)
    check.finish({"x-amz-checksum-crc32": crc_b64(BODY)})
    check = PayloadCheck(trailer_names=frozenset({"x-amz-checksum-crc32"}))
    check.feed(BODY)
    with pytest.raises(e.IncompleteBody):
        check.finish({})


@pytest.mark.parametrize(
    ("headers", "mode", "expect"),
    [([("Content-Length", "10")], None, 10),
     ([], None, e.MissingContentLength),
     ([("Content-Length", "-1")], None, e.InvalidArgument),
     ([("Content-Length", "1e9")], None, e.InvalidArgument),
     ([("Content-Length", "99"), ("x-amz-decoded-content-length", "5")],
      PayloadMode.STREAMING_SIGNED, 5),
     ([("Content-Length", "99")], PayloadMode.STREAMING_SIGNED, e.MissingContentLength),
     ([("Transfer-Encoding", "chunked")], None, None),
     ([("Transfer-Encoding", "gzip")], None, e.MissingContentLength),
     ([("Transfer-Encoding", "chunked")], PayloadMode.STREAMING_SIGNED,
      e.MissingContentLength)],
)
def test_declared_length(headers, mode, expect):
    req = S3Request.build("PUT", "/b/k", headers)
    if expect is None or isinstance(expect, int):
        assert declared_length(req, mode) == expect
    else:
        with pytest.raises(expect):
            declared_length(req, mode)


# --- hashing in batches (a worker thread hashes what the loop queued) ----------------------


@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=8),
       flushes=st.lists(st.booleans(), max_size=10))
def test_hashing_in_batches_gives_the_digests_of_the_whole_body(body, cuts, flushes):
    from blobstore.s3 import payload

    check = PayloadCheck(length=len(body), sha256=hashlib.sha256(body).hexdigest(),
                         content_md5=hashlib.md5(body).digest(),
                         checksums={"x-amz-checksum-crc32": crc_b64(body)})
    bounds = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        check.feed(body[start:end])
        if i < len(flushes) and flushes[i]:
            check.hash(check.take_pending())
    assert check._pending_bytes < payload.BULK_HASH_MIN or check.hash_due
    check.finish()  # hashes what is left; raises if any digest were off
    assert check.md5_hex == hashlib.md5(body).hexdigest()


def test_a_megabyte_queued_is_due_for_a_worker_and_taking_it_empties_the_queue():
    from blobstore.s3.payload import BULK_HASH_MIN

    body = b"x" * BULK_HASH_MIN
    check = PayloadCheck(length=len(body) + 1, sha256=hashlib.sha256(body + b"y").hexdigest())
    check.feed(body[:-1])
    assert not check.hash_due
    check.feed(body[-1:])
    assert check.hash_due
    assert b"".join(check.take_pending()) == body and not check.hash_due
    check.feed(b"y")
    with pytest.raises(e.ContentSha256Mismatch):  # the taken bytes were never hashed
        check.finish()


def test_a_check_without_digests_queues_nothing():
    check = PayloadCheck(length=2 * (1 << 20))
    check.feed(b"x" * (2 << 20))
    assert not check.hash_due and check.take_pending() == []
    check.finish()
