"""AWS Signature Version 4 verification for S3 (sans-IO).

Two ways a request can carry a signature (AWS S3 API reference, "Authenticating
Requests (AWS Signature Version 4)"):

* the ``Authorization`` header: ``AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/s3/
  aws4_request, SignedHeaders=h1;h2, Signature=hex``, with the time in ``x-amz-date`` (or
  ``Date``) and the payload's hash (or a mode) in ``x-amz-content-sha256``;
* a presigned URL: ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires``, ``X-Amz-SignedHeaders``, ``X-Amz-Signature`` query parameters, with
  ``UNSIGNED-PAYLOAD``.

The signature is HMAC-SHA256, under a key derived from the secret, date, region and
service, of the *string to sign*: the algorithm, the time, the scope and the SHA-256 of
the *canonical request* (method, canonical URI, canonical query, canonical headers,
signed header names, payload hash). The canonical forms are rebuilt here from what was
*received*, never from what the client claims:

* the URI is the received path percent-decoded once, then encoded with AWS's rules
  (unreserved ``A-Za-z0-9-._~`` and ``/`` kept, everything else ``%XX``): S3 does not
  normalise ``.``/``..`` or double slashes;
* the query's names and values are decoded, re-encoded the same way (``/`` too), sorted;
* each signed header's values are trimmed, inner runs of spaces collapsed, joined by ``,``.

What is refused, and with which S3 error, is in :func:`verify_request`. The result is an
:class:`Authorization` naming the access key and the payload mode; for the streaming
modes it builds the :class:`~blobstore.s3.chunked.ChunkedDecoder` that checks each chunk's
signature. Time is an argument (``now``, wall-clock seconds); nothing here reads a clock.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import unquote_to_bytes

from blobstore.s3.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    ExpiredPresignedUrl,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidPresignedExpiry,
    InvalidRequest,
    NotYetValidPresignedUrl,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
    UnsignedHeaders,
)
from blobstore.s3.request import S3Request

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

MAX_SKEW = 15 * 60.0
"""Seconds a signed request's time may differ from ours (S3's limit: 15 minutes)."""

MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
"""Longest presigned URL validity S3 accepts: one week (604800 s)."""

MAX_AUTH_HEADER = 4096
"""An Authorization header is ~200 bytes plus signed header names; 4 KiB is generous."""

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


class PayloadMode(enum.Enum):
    """What x-amz-content-sha256 promised about the body."""

    SIGNED = "signed"  # the header is the body's hex SHA-256: check it while reading
    UNSIGNED = "UNSIGNED-PAYLOAD"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def chunked(self) -> bool:
        return self.value.startswith("STREAMING-")


_MODES = {m.value: m for m in PayloadMode if m is not PayloadMode.SIGNED}


class CredentialStore(Protocol):
    def secret_for(self, access_key: str) -> str | None:
        """The secret key of ``access_key``, or None if there is no such key."""
        ...


class StaticCredentials:
    """A fixed access key -> secret map (tests, single-user setups)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = dict(keys)

    def secret_for(self, access_key: str) -> str | None:
        return self.keys.get(access_key)


@dataclass(frozen=True, slots=True)
class SigV4Config:
    region: str = "us-east-1"
    """The region clients must sign for (``aws configure set region``)."""

    service: str = "s3"
    max_skew: float = MAX_SKEW
    max_presign_expires: int = MAX_PRESIGN_EXPIRES


@dataclass(frozen=True, slots=True)
class Authorization:
    """A request whose signature checked out."""

    access_key: str
    amz_date: str
    scope: str
    """``DATE/REGION/SERVICE/aws4_request``."""
    signed_headers: tuple[str, ...]
    signature: str
    """The request's signature: the seed of an aws-chunked body's chunk signatures."""
    payload_mode: PayloadMode
    payload_sha256: str | None
    """Lowercase hex SHA-256 the body must have (mode SIGNED), else None."""
    presigned: bool
    signing_key: bytes = field(repr=False)


# --- canonical forms ------------------------------------------------------------------


def uri_encode(raw: bytes, *, keep_slash: bool) -> str:
    """AWS's URI encoding of raw bytes: unreserved kept, the rest %XX (uppercase)."""
    out = []
    for byte in raw:
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def canonical_uri(raw_path: str) -> str:
    return uri_encode(unquote_to_bytes(raw_path or "/"), keep_slash=True) or "/"


def canonical_query(request: S3Request, *, exclude: frozenset[str] = frozenset()) -> str:
    pairs = []
    for name, value in request.query_pairs_bytes():
        if name.decode("utf-8", "replace") in exclude:
            continue
        pairs.append((uri_encode(name, keep_slash=False), uri_encode(value, keep_slash=False)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_headers(request: S3Request, names: tuple[str, ...]) -> str:
    lines = []
    for name in names:
        values = request.header_values(name)
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def canonical_request(request: S3Request, signed: tuple[str, ...], payload_hash: str,
                      *, exclude_query: frozenset[str] = frozenset()) -> str:
    return "\n".join([
        request.method.upper(),
        canonical_uri(request.raw_path),
        canonical_query(request, exclude=exclude_query),
        canonical_headers(request, signed),
        ";".join(signed),
        payload_hash,
    ])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope,
                      hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# --- verification ---------------------------------------------------------------------


def verify_request(
    request: S3Request, credentials: CredentialStore, now: float,
    config: SigV4Config = SigV4Config(),
) -> Authorization | None:
    """Check a request's SigV4 signature; None for an anonymous (unsigned) request.

    Raises (S3 code in brackets): a malformed header [AuthorizationHeaderMalformed] or
    query [AuthorizationQueryParametersError]; both kinds at once, another algorithm, or a
    bad x-amz-content-sha256 [InvalidArgument]; SigV2 or a missing x-amz-content-sha256
    [InvalidRequest]; an unknown key [InvalidAccessKeyId]; a header time off by more than
    15 minutes [RequestTimeTooSkewed]; an expired or not-yet-valid presigned URL, a missing
    date, or x-amz-* headers left out of the signature [AccessDenied]; and any difference
    in the signature itself [SignatureDoesNotMatch].
    """
    header = request.header("authorization")
    presigned = any(name == "X-Amz-Algorithm" for name, _ in request.query_pairs())
    if header is not None and presigned:
        raise InvalidArgument("Only one auth mechanism allowed; only the X-Amz-Algorithm "
                              "query parameter or the Authorization header should be set")
    if presigned:
        return _verify_presigned(request, credentials, now, config)
    if header is None:
        return None
    return _verify_header(request, header, credentials, now, config)


@dataclass(frozen=True, slots=True)
class _Claim:
    access_key: str
    date: str
    region: str
    service: str
    signed: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


def _parse_credential(value: str, fail: Callable[[str], Exception]) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or not all(parts):
        raise fail(f"the Credential '{value}' is not ACCESSKEY/DATE/REGION/SERVICE/aws4_request")
    access_key, date, region, service, terminator = parts
    if terminator != TERMINATOR:
        raise fail(f"the Credential must end in {TERMINATOR}, not '{terminator}'")
    if not re.fullmatch(r"\d{8}", date):
        raise fail(f"the Credential date '{date}' is not YYYYMMDD")
    return access_key, date, region, service


def _parse_signed_headers(value: str, fail: Callable[[str], Exception]) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.strip().lower() for n in names):
        raise fail("SignedHeaders must be lowercase header names separated by ';'")
    if list(names) != sorted(set(names)):
        raise fail("SignedHeaders must be sorted and without repeats")
    if "host" not in names:
        raise fail("SignedHeaders must include host")
    return names


def _parse_auth_header(value: str) -> _Claim:
    def fail(why: str) -> AuthorizationHeaderMalformed:
        return AuthorizationHeaderMalformed(f"The authorization header is malformed; {why}.")

    if len(value) > MAX_AUTH_HEADER:
        raise fail("it is too long")
    if value.startswith("AWS "):
        raise InvalidRequest("Signature Version 2 is not supported; use AWS4-HMAC-SHA256.")
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise InvalidArgument(f"Unsupported Authorization Type '{algorithm[:40]}'")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, val = item.strip().partition("=")
        if not eq or name in fields:
            raise fail(f"'{item.strip()[:60]}' is not a single name=value component")
        fields[name] = val
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise fail("it needs exactly Credential, SignedHeaders and Signature")
    access_key, date, region, service = _parse_credential(fields["Credential"], fail)
    signed = _parse_signed_headers(fields["SignedHeaders"], fail)
    signature = fields["Signature"]
    if not _HEX64.fullmatch(signature):
        raise fail("the Signature is not 64 lowercase hex digits")
    return _Claim(access_key, date, region, service, signed, signature)


def _request_time(request: S3Request) -> tuple[str, float]:
    """The x-amz-date (or Date) as (YYYYMMDDTHHMMSSZ, epoch seconds)."""
    amz = request.header("x-amz-date")
    if amz is not None:
        if not _AMZ_DATE.fullmatch(amz):
            raise AccessDenied("X-Amz-Date must be in the ISO8601 Long Format YYYYMMDDTHHMMSSZ")
        return amz, _amz_epoch(amz, AccessDenied)
    date = request.header("date")
    if date is None:
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    try:
        parsed = parsedate_to_datetime(date)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).strftime(AMZ_DATE_FORMAT), parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: huge fields
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header"
                           ) from None


def _amz_epoch(amz: str, error: type[Exception]) -> float:
    try:
        return datetime.strptime(amz, AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise error(f"'{amz}' is not a valid YYYYMMDDTHHMMSSZ time") from None


def _check_scope(claim: _Claim, amz_date: str, config: SigV4Config,
                 fail: Callable[[str], Exception]) -> None:
    if claim.date != amz_date[:8]:
        raise fail(f"the credential date {claim.date} is not the date of the request "
                   f"time {amz_date}")
    if claim.region != config.region:
        err = fail(f"the region '{claim.region}' is wrong; expecting '{config.region}'")
        if isinstance(err, AuthorizationHeaderMalformed):
            err.extra["Region"] = config.region
        raise err
    if claim.service != config.service:
        raise fail(f"the service '{claim.service}' is wrong; expecting '{config.service}'")


def _check_all_amz_headers_signed(request: S3Request, signed: tuple[str, ...]) -> None:
    unsigned = sorted({k.lower() for k, _ in request.headers
                       if k.lower().startswith("x-amz-") and k.lower() not in signed})
    if unsigned:
        raise UnsignedHeaders(HeadersNotSigned=", ".join(unsigned))


def _secret(credentials: CredentialStore, access_key: str) -> str:
    secret = credentials.secret_for(access_key)
    if secret is None:
        raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
    return secret


def _compare(claim: _Claim, key: bytes, canonical: str, to_sign: str) -> None:
    expected = sign(key, to_sign)
    if not _HEX64.fullmatch(claim.signature) or \
            not hmac.compare_digest(expected, claim.signature):
        raise SignatureDoesNotMatch(
            AWSAccessKeyId=claim.access_key, StringToSign=to_sign,
            SignatureProvided=claim.signature[:128], CanonicalRequest=canonical,
        )


def _payload_mode(value: str | None) -> tuple[PayloadMode, str | None]:
    if value is None:
        raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    mode = _MODES.get(value)
    if mode is not None:
        return mode, None
    if _HEX64.fullmatch(value.lower()):
        return PayloadMode.SIGNED, value.lower()
    raise InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
        "(-TRAILER), STREAMING-UNSIGNED-PAYLOAD-TRAILER or a SHA-256 in hex",
        ArgumentName="x-amz-content-sha256",
    )


def _verify_header(request: S3Request, header: str, credentials: CredentialStore,
                   now: float, config: SigV4Config) -> Authorization:
    claim = _parse_auth_header(header)

    def fail(why: str) -> AuthorizationHeaderMalformed:
        return AuthorizationHeaderMalformed(f"The authorization header is malformed; {why}.")

    amz_date, when = _request_time(request)
    _check_scope(claim, amz_date, config, fail)
    secret = _secret(credentials, claim.access_key)
    if abs(now - when) > config.max_skew:
        raise RequestTimeTooSkewed(
            RequestTime=amz_date,
            ServerTime=datetime.fromtimestamp(now, UTC).strftime(AMZ_DATE_FORMAT),
            MaxAllowedSkewMilliseconds=int(config.max_skew * 1000),
        )
    content_sha = request.header("x-amz-content-sha256")
    mode, payload_sha = _payload_mode(content_sha)
    for name in claim.signed:
        if not request.header_values(name):
            raise SignatureDoesNotMatch(f"signed header '{name}' is not in the request")
    _check_all_amz_headers_signed(request, claim.signed)
    key = signing_key(secret, claim.date, claim.region, claim.service)
    canonical = canonical_request(request, claim.signed, content_sha or "")
    to_sign = string_to_sign(amz_date, claim.scope, canonical)
    _compare(claim, key, canonical, to_sign)
    return Authorization(claim.access_key, amz_date, claim.scope, claim.signed,
                         claim.signature, mode, payload_sha, False, key)


_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                   "X-Amz-SignedHeaders", "X-Amz-Signature")


def _verify_presigned(request: S3Request, credentials: CredentialStore, now: float,
                      config: SigV4Config) -> Authorization:
    def fail(why: str) -> AuthorizationQueryParametersError:
        return AuthorizationQueryParametersError(f"Query-string authentication is malformed; "
                                                 f"{why}.")

    params: dict[str, str] = {}
    for name, value in request.query_pairs():
        if name in _PRESIGN_PARAMS:
            if name in params:
                raise fail(f"{name} appears twice")
            params[name] = value
    missing = [p for p in _PRESIGN_PARAMS if p not in params]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise fail(f"X-Amz-Algorithm must be {ALGORITHM}")
    access_key, date, region, service = _parse_credential(params["X-Amz-Credential"], fail)
    signed = _parse_signed_headers(params["X-Amz-SignedHeaders"], fail)
    signature = params["X-Amz-Signature"]  # any other text fails the comparison below
    claim = _Claim(access_key, date, region, service, signed, signature)
    amz_date = params["X-Amz-Date"]
    if not _AMZ_DATE.fullmatch(amz_date):
        raise fail("X-Amz-Date must be in the ISO8601 Long Format YYYYMMDDTHHMMSSZ")
    when = _amz_epoch(amz_date, AuthorizationQueryParametersError)
    expires_text = params["X-Amz-Expires"]
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 10:
        raise InvalidPresignedExpiry("X-Amz-Expires must be a non-negative integer")
    expires = int(expires_text)
    if expires > config.max_presign_expires:
        raise InvalidPresignedExpiry(
            f"X-Amz-Expires must be less than a week (in seconds) that is; the given "
            f"X-Amz-Expires must be less than {config.max_presign_expires} seconds")
    _check_scope(claim, amz_date, config, fail)
    secret = _secret(credentials, access_key)
    server_time = datetime.fromtimestamp(now, UTC).strftime(AMZ_DATE_FORMAT)
    if now < when - config.max_skew:
        raise NotYetValidPresignedUrl(RequestTime=amz_date, ServerTime=server_time)
    if now > when + expires:
        raise ExpiredPresignedUrl(
            Expires=datetime.fromtimestamp(when + expires, UTC).strftime(AMZ_DATE_FORMAT),
            ServerTime=server_time,
        )
    for name in signed:
        if not request.header_values(name):
            raise SignatureDoesNotMatch(f"signed header '{name}' is not in the request")
    _check_all_amz_headers_signed(request, signed)
    payload = request.query().get("X-Amz-Content-Sha256", PayloadMode.UNSIGNED.value)
    key = signing_key(secret, date, region, service)
    canonical = canonical_request(request, signed, payload,
                                  exclude_query=frozenset({"X-Amz-Signature"}))
    to_sign = string_to_sign(amz_date, claim.scope, canonical)
    _compare(claim, key, canonical, to_sign)
    mode, payload_sha = _payload_mode(payload)
    if mode.chunked:
        raise InvalidArgument("a presigned URL cannot carry an aws-chunked body")
    return Authorization(access_key, amz_date, claim.scope, signed, signature, mode,
                         payload_sha, True, key)
