"""The S3 request body: verified as it streams, its hashes computed off the event loop."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest

from blobstore.s3 import errors as e
from blobstore.s3.payload import BULK_HASH_MIN, PayloadCheck
from blobstore.s3.request import S3Request
from blobstore.s3http.http import Body

PIECE = 64 << 10


def receiver(body: bytes) -> Any:
    pieces = [body[i:i + PIECE] for i in range(0, len(body), PIECE)]

    async def receive() -> dict[str, Any]:
        data = pieces.pop(0)
        return {"type": "http.request", "body": data, "more_body": bool(pieces)}
    return receive


class WatchedCheck(PayloadCheck):
    """Notes the thread each batch of hashing ran in."""

    threads: list[int]

    def hash(self, pieces: list[bytes]) -> None:
        self.threads.append(threading.get_ident())
        super().hash(pieces)


async def stream(body: bytes, sha256: str) -> tuple[bytes, WatchedCheck]:
    check = WatchedCheck(length=len(body), sha256=sha256,
                         content_md5=hashlib.md5(body).digest())
    check.threads = []
    request = S3Request("PUT", "/b/k", "", (("content-length", str(len(body))),))
    got = [piece async for piece in Body(receiver(body), request, None, check)]
    return b"".join(got), check


@pytest.mark.trio
async def test_a_large_body_is_hashed_in_worker_threads_a_megabyte_at_a_time():
    body = bytes(range(256)) * (3 * BULK_HASH_MIN // 256 + 1000)
    got, check = await stream(body, hashlib.sha256(body).hexdigest())
    assert got == body
    loop = threading.get_ident()
    workers = [t for t in check.threads if t != loop]
    assert len(workers) == 3  # three full megabytes in workers, the rest at finish
    assert check.threads[-1] == loop and check.md5_hex == hashlib.md5(body).hexdigest()


@pytest.mark.trio
async def test_a_large_body_with_a_wrong_sha256_is_refused():
    body = b"y" * (2 * BULK_HASH_MIN)
    with pytest.raises(e.ContentSha256Mismatch):
        await stream(body, hashlib.sha256(b"other").hexdigest())
