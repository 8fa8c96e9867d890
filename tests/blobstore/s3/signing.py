"""Requests signed by botocore's own signers, as S3Request values for our verifier."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
from collections.abc import Iterator
from urllib.parse import urlsplit

import botocore.auth
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import StaticCredentials

ACCESS = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDS = Credentials(ACCESS, SECRET)
STORE = StaticCredentials({ACCESS: SECRET})
T0 = dt.datetime(2026, 1, 15, 12, 30, 0, tzinfo=dt.UTC)
NOW = T0.timestamp()


@contextlib.contextmanager
def frozen(at: dt.datetime = T0) -> Iterator[None]:
    """botocore reads the time through botocore.auth.get_current_datetime."""
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: at.replace(tzinfo=None)
    try:
        yield
    finally:
        botocore.auth.get_current_datetime = original


def to_s3request(method: str, url: str, headers) -> S3Request:
    parts = urlsplit(url)
    pairs = [(str(k), v.decode() if isinstance(v, bytes) else str(v)) for k, v in headers.items()]
    if not any(k.lower() == "host" for k, _ in pairs):
        pairs.append(("Host", parts.netloc))
    return S3Request(method, parts.path or "/", parts.query, tuple(pairs))


def header_signed(method: str, url: str, headers: dict[str, str] | None = None,
                  body: bytes = b"", *, region: str = "us-east-1",
                  at: dt.datetime = T0) -> S3Request:
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    with frozen(at):
        S3SigV4Auth(CREDS, "s3", region).add_auth(req)
    return to_s3request(method, req.url, req.headers)


def presigned(method: str, url: str, *, expires: int = 600, headers=None,
              region: str = "us-east-1", at: dt.datetime = T0) -> S3Request:
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}))
    with frozen(at):
        S3SigV4QueryAuth(CREDS, "s3", region, expires=expires).add_auth(req)
    return to_s3request(method, req.url, req.headers)


def chunk_signature(key: bytes, amz_date: str, scope: str, previous: str, data: bytes) -> str:
    to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                         hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()])
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def encode_signed_chunks(auth, payload: bytes, chunk: int,
                         trailers: dict[str, str] | None = None) -> bytes:
    """An aws-chunked body as an AWS SDK writes it (S3 API reference, sigv4-streaming)."""
    out = []
    previous = auth.signature
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)] + [b""]
    for piece in pieces:
        sig = chunk_signature(auth.signing_key, auth.amz_date, auth.scope, previous, piece)
        previous = sig
        out.append(b"%x;chunk-signature=%s\r\n" % (len(piece), sig.encode()))
        if piece or trailers is None:
            out.append(piece + b"\r\n")
    if trailers is not None:
        canonical = "".join(f"{k}:{v}\n" for k, v in trailers.items())
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", auth.amz_date, auth.scope, previous,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        sig = hmac.new(auth.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        for k, v in trailers.items():
            out.append(f"{k}:{v}\r\n".encode())
        out.append(f"x-amz-trailer-signature:{sig}\r\n\r\n".encode())
    return b"".join(out)
