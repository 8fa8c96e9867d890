"""Real boto3 PutObject requests, captured before sending, through verify + body checks."""

from __future__ import annotations

import boto3
import botocore.config
import pytest

from blobstore.s3 import errors as e
from blobstore.s3.chunked import ChunkedDecoder
from blobstore.s3.payload import PayloadCheck
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import PayloadMode, verify_request
from tests.blobstore.s3.signing import ACCESS, NOW, SECRET, STORE, frozen, to_s3request


class _Captured(Exception):
    pass


def capture_put(scheme: str, body: bytes, **extra) -> tuple[S3Request, bytes]:
    captured = []

    def grab(request, **kwargs):
        captured.append(request)
        raise _Captured()

    client = boto3.client(
        "s3", endpoint_url=f"{scheme}://127.0.0.1:9000", region_name="us-east-1",
        aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 0}),
    )
    client.meta.events.register("before-send.s3", grab)
    with frozen(), pytest.raises(_Captured):
        client.put_object(Bucket="bucket", Key="dir/key one.bin", Body=body, **extra)
    (request,) = captured
    raw = request.body.read() if hasattr(request.body, "read") else (request.body or b"")
    return to_s3request(request.method, request.url, request.headers), raw


def receive(req: S3Request, raw: bytes, pieces: int = 7) -> bytes:
    """What the HTTP layer will do with a PUT body: verify, decode, check, in pieces."""
    auth = verify_request(req, STORE, NOW)
    check = PayloadCheck.for_request(req, auth)
    decoder = None
    if auth.payload_mode.chunked:
        decoder = ChunkedDecoder(mode=auth.payload_mode, decoded_length=check.length, auth=auth,
                                 trailer_names=check.trailer_names)
    out = []
    step = max(1, len(raw) // pieces)
    for i in range(0, len(raw), step):
        data = raw[i:i + step]
        for piece in decoder.feed(data) if decoder else [data]:
            check.feed(piece)
            out.append(piece)
    trailers = decoder.finish() if decoder else {}
    check.finish(trailers)
    return b"".join(out)


BODY = bytes(range(256)) * 300


def test_plain_http_put_with_signed_sha256_and_crc32_header():
    req, raw = capture_put("http", BODY)
    assert req.header("x-amz-checksum-crc32")
    assert receive(req, raw) == BODY


def test_https_put_with_aws_chunked_unsigned_trailer():
    req, raw = capture_put("https", BODY)
    auth = verify_request(req, STORE, NOW)
    assert auth.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
    assert receive(req, raw) == BODY


def test_content_md5_from_boto3_is_checked():
    import base64
    import hashlib

    md5 = base64.b64encode(hashlib.md5(BODY).digest()).decode()
    req, raw = capture_put("http", BODY, ContentMD5=md5)
    assert receive(req, raw) == BODY
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    req, raw = capture_put("http", BODY, ContentMD5=wrong)
    with pytest.raises(e.BadDigest):
        receive(req, raw)


def test_tampered_body_fails_the_signed_sha256():
    req, raw = capture_put("http", BODY)
    bad = bytearray(raw)
    bad[1000] ^= 1
    with pytest.raises(e.ContentSha256Mismatch) as info:
        receive(req, bytes(bad))
    assert info.value.code == "XAmzContentSHA256Mismatch"


def test_tampered_chunked_body_fails_the_trailer_crc():
    req, raw = capture_put("https", BODY)
    bad = bytearray(raw)
    bad[1000] ^= 1
    with pytest.raises(e.BadDigest):
        receive(req, bytes(bad))


def test_truncated_chunked_body_is_incomplete():
    req, raw = capture_put("https", BODY)
    with pytest.raises(e.IncompleteBody):
        receive(req, raw[:-10])
