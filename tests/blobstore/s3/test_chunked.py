"""The aws-chunked decoder: AWS's published example, SDK-style bodies, hostile bodies."""

from __future__ import annotations

import io
import zlib
from base64 import b64encode
from datetime import UTC, datetime

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.chunked import ChunkedDecoder
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import PayloadMode, StaticCredentials, verify_request
from tests.blobstore.s3.signing import encode_signed_chunks

# The example of the S3 API reference, "Signature Calculations for the Authorization
# Header: Transferring Payload in Multiple Chunks" (66560 bytes of 'a' in 64 KiB chunks).
AWS_HEADERS = [
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", "20130524T000000Z"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
     "aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
     "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature="
     "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
    ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    ("Content-Encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
    ("Content-Length", "66824"),
]
AWS_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    b"\r\n" + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    b"\r\n" + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
    b"\r\n\r\n"
)
AWS_STORE = StaticCredentials({"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})
AWS_NOW = datetime(2013, 5, 24, 0, 1, tzinfo=UTC).timestamp()


def aws_auth(**replace):
    req = S3Request.build("PUT", "/examplebucket/chunkObject.txt", AWS_HEADERS)
    auth = verify_request(req, AWS_STORE, AWS_NOW)
    assert auth.payload_mode is PayloadMode.STREAMING_SIGNED
    return auth


def decoder(auth, length=66560, **kw) -> ChunkedDecoder:
    return ChunkedDecoder(mode=auth.payload_mode, decoded_length=length, auth=auth, **kw)


def decode_all(d: ChunkedDecoder, body: bytes, step: int | None = None) -> bytes:
    out = []
    step = step or len(body) or 1
    for i in range(0, len(body), step):
        out += d.feed(body[i:i + step])
    d.finish()
    return b"".join(out)


def test_aws_published_example_verifies_seed_and_every_chunk():
    assert len(AWS_BODY) == 66824
    assert decode_all(decoder(aws_auth()), AWS_BODY) == b"a" * 66560


def test_aws_example_byte_by_byte_releases_only_whole_verified_chunks():
    d = decoder(aws_auth())
    sizes = []
    for i in range(0, len(AWS_BODY), 997):
        sizes += [len(p) for p in d.feed(AWS_BODY[i:i + 997])]
    d.finish()
    assert sizes == [65536, 1024]


@pytest.mark.parametrize("where", [100, 65600, len(AWS_BODY) - 5])
def test_flipped_bit_anywhere_is_signature_mismatch(where):
    body = bytearray(AWS_BODY)
    body[where] ^= 1
    d = decoder(aws_auth())
    with pytest.raises((e.SignatureDoesNotMatch, e.InvalidChunkedBody)):
        decode_all(d, bytes(body))


def test_data_of_a_bad_chunk_is_never_released():
    body = bytearray(AWS_BODY)
    body[5000] ^= 1
    d = decoder(aws_auth())
    with pytest.raises(e.SignatureDoesNotMatch):
        d.feed(bytes(body[:65700]))
    assert d.received == 0


def test_reordered_chunks_break_the_chain():
    first_end = AWS_BODY.index(b"\r\n400;") + 2
    second_end = AWS_BODY.index(b"0;chunk-signature=b6c6")
    c1, c2, c3 = AWS_BODY[:first_end], AWS_BODY[first_end:second_end], AWS_BODY[second_end:]
    assert c1 + c2 + c3 == AWS_BODY
    with pytest.raises(e.SignatureDoesNotMatch):
        decode_all(decoder(aws_auth()), c2 + c1 + c3)


@pytest.mark.parametrize("cut", [0, 10, 90, 65000, len(AWS_BODY) - 2])
def test_truncated_body_is_incomplete(cut):
    d = decoder(aws_auth())
    d.feed(AWS_BODY[:cut])
    with pytest.raises(e.IncompleteBody):
        d.finish()


def test_declared_length_mismatch():
    with pytest.raises(e.IncompleteBody):
        decode_all(decoder(aws_auth(), length=66000), AWS_BODY)
    with pytest.raises(e.IncompleteBody):
        decode_all(decoder(aws_auth(), length=70000), AWS_BODY)


def test_huge_chunk_size_is_refused_before_buffering():
    d = decoder(aws_auth(), length=None)
    with pytest.raises(e.EntityTooLarge):
        d.feed(b"ffffffffffff;chunk-signature=" + b"0" * 64 + b"\r\n")


@pytest.mark.parametrize("body", [
    b"zz;chunk-signature=" + b"0" * 64 + b"\r\n",  # not hex
    b"10;chunk-signature=short\r\n",
    b"10\r\n",  # signed mode needs a signature
    b"1" * 5000,  # endless size line
    b"12345678901234567;chunk-signature=" + b"0" * 64 + b"\r\n",  # 17 hex digits
])
def test_malformed_size_lines(body):
    with pytest.raises(e.InvalidChunkedBody):
        decoder(aws_auth(), length=None).feed(body)


def test_missing_crlf_after_data_and_data_after_the_end():
    broken = AWS_BODY.replace(b"a" * 1024 + b"\r\n", b"a" * 1024 + b"XX")
    with pytest.raises(e.InvalidChunkedBody):
        decode_all(decoder(aws_auth()), broken)
    with pytest.raises(e.InvalidChunkedBody):
        decode_all(decoder(aws_auth()), AWS_BODY + b"extra")


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=3000), chunk=st.integers(1, 700), step=st.integers(1, 400),
       trailer=st.booleans())
def test_sdk_style_signed_bodies_decode_exactly_in_any_split(payload, chunk, step, trailer):
    auth = aws_auth()
    mode = PayloadMode.STREAMING_SIGNED_TRAILER if trailer else PayloadMode.STREAMING_SIGNED
    auth = type(auth)(**{**{f: getattr(auth, f) for f in auth.__dataclass_fields__},
                         "payload_mode": mode})
    trailers = {"x-amz-checksum-crc32": b64encode(
        zlib.crc32(payload).to_bytes(4, "big")).decode()} if trailer else None
    body = encode_signed_chunks(auth, payload, chunk, trailers)
    d = ChunkedDecoder(mode=mode, decoded_length=len(payload), auth=auth,
                       trailer_names=frozenset(trailers or ()))
    assert decode_all(d, body, step) == payload
    assert d.trailers == (trailers or {})


def _trailer_auth():
    auth = aws_auth()
    fields = {f: getattr(auth, f) for f in auth.__dataclass_fields__}
    return type(auth)(**{**fields, "payload_mode": PayloadMode.STREAMING_SIGNED_TRAILER})


def test_signed_trailer_tampering():
    auth = _trailer_auth()
    body = encode_signed_chunks(auth, b"x" * 100, 64, {"x-amz-checksum-crc32": "AAAAAA=="})
    mk = lambda: ChunkedDecoder(mode=auth.payload_mode, decoded_length=100, auth=auth,  # noqa: E731
                                trailer_names=frozenset({"x-amz-checksum-crc32"}))
    with pytest.raises(e.SignatureDoesNotMatch):
        decode_all(mk(), body.replace(b"AAAAAA==", b"AAAAAB=="))
    no_sig = body.split(b"x-amz-trailer-signature")[0] + b"\r\n"
    with pytest.raises(e.InvalidChunkedBody):
        decode_all(mk(), no_sig)
    undeclared = ChunkedDecoder(mode=auth.payload_mode, decoded_length=100, auth=auth)
    with pytest.raises(e.InvalidChunkedBody):
        decode_all(undeclared, body)


def test_botocore_unsigned_trailer_body():
    payload = b"payload bytes " * 1000
    body = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum,
                             checksum_name="x-amz-checksum-crc32", chunk_size=4096).read()
    d = ChunkedDecoder(mode=PayloadMode.STREAMING_UNSIGNED_TRAILER, decoded_length=len(payload),
                       trailer_names=frozenset({"x-amz-checksum-crc32"}))
    out = decode_all(d, body, 333)
    assert out == payload
    assert d.trailers["x-amz-checksum-crc32"] == b64encode(
        zlib.crc32(payload).to_bytes(4, "big")).decode()


def test_unsigned_streams_data_before_the_chunk_ends():
    d = ChunkedDecoder(mode=PayloadMode.STREAMING_UNSIGNED_TRAILER, decoded_length=None)
    assert d.feed(b"10\r\nabcd") == [b"abcd"]
    assert d.feed(b"efghijklmnop\r\n0\r\n\r\n") == [b"efghijklmnop"]
    assert d.finish() == {}


def test_missing_declared_trailer_is_incomplete():
    d = ChunkedDecoder(mode=PayloadMode.STREAMING_UNSIGNED_TRAILER, decoded_length=1,
                       trailer_names=frozenset({"x-amz-checksum-crc32"}))
    with pytest.raises(e.IncompleteBody):
        d.feed(b"1\r\na\r\n0\r\n\r\n")
        d.finish()


def test_signed_mode_needs_auth():
    with pytest.raises(ValueError):
        ChunkedDecoder(mode=PayloadMode.STREAMING_SIGNED, decoded_length=1)
