"""The ``aws-chunked`` request body: incremental decoding and chunk-signature checks.

With ``x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` a client signs a body it
has not finished reading: the body is a series of chunks, each carrying the signature of
its data chained to the previous one (S3 API reference, "Transferring Payload in Multiple
Chunks")::

    <hex size>;chunk-signature=<sig>\\r\\n<data>\\r\\n ... 0;chunk-signature=<sig>\\r\\n\\r\\n

    sig(i) = HMAC(signing key, "AWS4-HMAC-SHA256-PAYLOAD\\n" date "\\n" scope "\\n"
                  sig(i-1) "\\n" SHA256("") "\\n" SHA256(data(i)))      sig(-1) = seed

The ``-TRAILER`` variants end with trailing headers (a checksum) after the zero chunk;
the signed one signs them too (``AWS4-HMAC-SHA256-TRAILER``, "Signature calculations for
trailing headers"); ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (what botocore sends over TLS)
has bare ``<hex size>\\r\\n`` lines and no signatures.

:class:`ChunkedDecoder` is sans-IO: :meth:`~ChunkedDecoder.feed` takes bytes as they arrive
in any split and returns the payload bytes that are *verified*: a signed chunk is held
until its whole data has arrived and its signature checked, so nothing unauthenticated
leaves the decoder (memory: one chunk, at most ``max_chunk_size``).
:meth:`~ChunkedDecoder.finish` at end of body raises unless the body was complete.

Refused: a bad size line or missing CRLF [InvalidRequest]; a chunk larger than
``max_chunk_size`` [EntityTooLarge]; more data than x-amz-decoded-content-length or a
body that stops early [IncompleteBody]; a wrong chunk or trailer signature
[SignatureDoesNotMatch]; undeclared trailers or data after the end [InvalidRequest].
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re

from blobstore.s3.errors import (
    EntityTooLarge,
    IncompleteBody,
    InvalidChunkedBody,
    SignatureDoesNotMatch,
)
from blobstore.s3.sigv4 import EMPTY_SHA256, Authorization, PayloadMode

MAX_CHUNK_SIZE = 16 * 1024 * 1024
"""Largest chunk accepted (16 MiB). SDKs send 64 KiB to 1 MiB; a signed chunk is held in
memory until its signature is checked, so this bounds memory per upload."""

MAX_LINE = 4096
"""A size line is ~90 bytes (16 hex digits + a signature); a trailer line ~60."""

MAX_TRAILERS = 16

_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(;.*)?")
_CHUNK_SIG = re.compile(rb";chunk-signature=([0-9a-f]{64})")


class _State(enum.Enum):
    SIZE = "size"
    DATA = "data"
    DATA_END = "data-end"
    TRAILER = "trailer"
    DONE = "done"


class ChunkedDecoder:
    """Decode one aws-chunked body (see the module docstring)."""

    def __init__(
        self,
        *,
        mode: PayloadMode,
        decoded_length: int | None,
        auth: Authorization | None = None,
        trailer_names: frozenset[str] = frozenset(),
        max_chunk_size: int = MAX_CHUNK_SIZE,
    ) -> None:
        if not mode.chunked:
            raise ValueError(f"{mode} is not an aws-chunked mode")
        self.signed = mode in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)
        self.trailer = mode in (PayloadMode.STREAMING_SIGNED_TRAILER,
                                PayloadMode.STREAMING_UNSIGNED_TRAILER)
        if self.signed and auth is None:
            raise ValueError("signed aws-chunked bodies need the request's Authorization")
        self.auth = auth
        self.decoded_length = decoded_length
        self.trailer_names = frozenset(n.lower() for n in trailer_names)
        self.max_chunk_size = max_chunk_size
        self.trailers: dict[str, str] = {}
        self.received = 0
        """Payload bytes decoded so far."""
        self._previous = auth.signature if auth is not None else ""
        self._state = _State.SIZE
        self._buffer = bytearray()
        self._size = 0
        self._claimed = ""
        self._data = bytearray()
        self._hash = hashlib.sha256()
        self._final = False
        self._trailer_lines: list[bytes] = []

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes of the body as they arrive; returns verified payload bytes."""
        self._buffer += data
        out: list[bytes] = []
        while True:
            if self._state is _State.SIZE:
                line = self._line()
                if line is None:
                    break
                self._on_size_line(line)
            elif self._state is _State.DATA:
                if not self._on_data(out):
                    break
            elif self._state is _State.DATA_END:
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise InvalidChunkedBody("chunk data is not followed by CRLF")
                del self._buffer[:2]
                self._state = _State.DONE if self._final else _State.SIZE
            elif self._state is _State.TRAILER:
                line = self._line()
                if line is None:
                    break
                self._on_trailer_line(line)
            else:  # DONE
                if self._buffer:
                    raise InvalidChunkedBody("data after the end of the aws-chunked body")
                break
        return out

    def finish(self) -> dict[str, str]:
        """End of the HTTP body: the trailers, or IncompleteBody if the body stopped early."""
        if self._state is not _State.DONE:
            raise IncompleteBody(
                f"the aws-chunked body ended early ({self.received} payload bytes decoded, "
                f"in state {self._state.value})"
            )
        if self.decoded_length is not None and self.received != self.decoded_length:
            raise IncompleteBody(
                f"x-amz-decoded-content-length is {self.decoded_length}, body had "
                f"{self.received} bytes"
            )
        return dict(self.trailers)

    # --- states -----------------------------------------------------------------------

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", 0, MAX_LINE + 2)
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise InvalidChunkedBody("aws-chunked line longer than 4 KiB")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _on_size_line(self, line: bytes) -> None:
        match = _SIZE.fullmatch(line)
        if match is None:
            raise InvalidChunkedBody(f"bad chunk size line {line[:40]!r}")
        size = int(match.group(1), 16)
        if size > self.max_chunk_size:
            raise EntityTooLarge(f"aws-chunked chunk of {size} bytes exceeds the "
                                 f"{self.max_chunk_size} byte limit")
        if self.decoded_length is not None and self.received + size > self.decoded_length:
            raise IncompleteBody(f"chunks carry more than x-amz-decoded-content-length "
                                 f"({self.decoded_length}) bytes")
        if self.signed:
            sig = _CHUNK_SIG.fullmatch(match.group(2) or b"")
            if sig is None:
                raise InvalidChunkedBody("chunk size line lacks ;chunk-signature=<64 hex>")
            self._claimed = sig.group(1).decode()
        self._size = size
        self._final = size == 0
        self._hash = hashlib.sha256()
        self._data.clear()
        self._state = _State.DATA

    def _on_data(self, out: list[bytes]) -> bool:
        """Consume chunk data; True when the chunk is complete."""
        want = self._size - len(self._data) if self.signed else self._size
        take = bytes(self._buffer[:want])
        del self._buffer[: len(take)]
        if self.signed:
            self._data += take
            self._hash.update(take)
            if len(self._data) < self._size:
                return False
            self._check_chunk_signature()
            if self._data:
                out.append(bytes(self._data))
            self.received += len(self._data)
            self._data.clear()
        else:
            if take:
                out.append(take)
                self.received += len(take)
                self._size -= len(take)
            if self._size:
                return False
        if self._final and self.trailer:
            self._state = _State.TRAILER
        else:
            self._state = _State.DATA_END
        return True

    def _check_chunk_signature(self) -> None:
        assert self.auth is not None
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self.auth.amz_date, self.auth.scope,
                             self._previous, EMPTY_SHA256, self._hash.hexdigest()])
        self._expect_signature(to_sign, self._claimed, f"chunk at payload byte {self.received}")

    def _expect_signature(self, to_sign: str, claimed: str, what: str) -> None:
        assert self.auth is not None
        expected = hmac.new(self.auth.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, claimed):
            raise SignatureDoesNotMatch(f"the signature of the aws-chunked {what} does not "
                                        "match", StringToSign=to_sign)
        self._previous = expected

    def _on_trailer_line(self, line: bytes) -> None:
        if line == b"":
            self._end_trailers()
            return
        if len(self._trailer_lines) >= MAX_TRAILERS:
            raise InvalidChunkedBody("too many trailing headers")
        self._trailer_lines.append(line)

    def _end_trailers(self) -> None:
        signature = None
        canonical = []
        for line in self._trailer_lines:
            name, colon, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if not colon or not name:
                raise InvalidChunkedBody(f"bad trailing header {line[:40]!r}")
            if name == "x-amz-trailer-signature" and self.signed:
                if signature is not None:
                    raise InvalidChunkedBody("two trailer signatures")
                signature = value
                continue
            if name not in self.trailer_names:
                raise InvalidChunkedBody(f"trailing header '{name}' was not declared in "
                                         "x-amz-trailer")
            if name in self.trailers:
                raise InvalidChunkedBody(f"trailing header '{name}' sent twice")
            self.trailers[name] = value
            canonical.append(f"{name}:{value}\n")
        if self.signed:
            if signature is None:
                raise InvalidChunkedBody("signed trailer without x-amz-trailer-signature")
            assert self.auth is not None
            digest = hashlib.sha256("".join(canonical).encode("latin-1")).hexdigest()
            to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", self.auth.amz_date,
                                 self.auth.scope, self._previous, digest])
            self._expect_signature(to_sign, signature, "trailer")
        missing = self.trailer_names - set(self.trailers)
        if missing:
            raise IncompleteBody(f"declared trailing headers missing: {', '.join(sorted(missing))}")
        self._state = _State.DONE
