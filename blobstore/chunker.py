"""Incremental split of a byte stream into fixed-size chunks.

Objects are never held whole: bytes arrive in pieces of any size (an HTTP body, a file
read), and :class:`Chunker` hands back each complete chunk as soon as it has one. Every
chunk is exactly ``chunk_size`` bytes except the last, which is shorter (never empty). An
empty stream gives no chunks at all.

Memory: the chunker holds at most ``chunk_size - 1`` bytes between calls, plus whatever one
``feed`` brings in (it returns those chunks at once, so callers bound memory by feeding
pieces no bigger than a chunk, as :func:`chunks` does for HTTP-sized pieces).

Why 4 MiB: large enough that per-chunk costs (a header, k+m round trips, an AEAD tag) are
noise, small enough that a Raspberry Pi decodes one in a few milliseconds and a ranged
read never fetches more than 4 MiB beyond what it needs (Garage uses 1 MiB, Ceph RGW 4 MiB).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from meshcloud.errors import LocalProtocolError

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes per chunk (4 MiB): see the module docstring."""

MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 64 * 1024 * 1024
"""A chunk is sealed and coded in memory: 64 MiB is the most a small node should hold."""


class Chunker:
    """Feed bytes in, get complete chunks out; :meth:`finish` returns the short tail."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be within 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = chunk_size
        self._buffer = bytearray()
        self._finished = False
        self.total = 0
        """Bytes fed so far."""

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of their chunk."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; returns every chunk they complete (possibly none)."""
        if self._finished:
            raise LocalProtocolError("feed after finish")
        self.total += len(data)
        size = self.chunk_size
        out: list[bytes] = []
        view = memoryview(data)
        if self._buffer:
            need = size - len(self._buffer)
            if len(view) < need:
                self._buffer += view
                return out
            self._buffer += view[:need]
            out.append(bytes(self._buffer))
            self._buffer.clear()
            view = view[need:]
        # Whole chunks straight from the input, without passing through the buffer.
        while len(view) >= size:
            out.append(bytes(view[:size]))
            view = view[size:]
        if view:
            self._buffer += view
        return out

    def finish(self) -> list[bytes]:
        """End of stream: the last, short chunk if any bytes are left. Feeding after is an error."""
        if self._finished:
            raise LocalProtocolError("finish called twice")
        self._finished = True
        if not self._buffer:
            return []
        tail = bytes(self._buffer)
        self._buffer.clear()
        return [tail]


async def chunks(
    source: AsyncIterable[bytes], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Chunks of an async byte source, in order, as each completes."""
    chunker = Chunker(chunk_size)
    async for piece in source:
        for chunk in chunker.feed(piece):
            yield chunk
    for chunk in chunker.finish():
        yield chunk
