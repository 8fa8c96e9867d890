"""What the multiplexer core reports to its driver (see :mod:`meshcloud.transport.mux`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream for ``protocol`` (accept it, or reset it)."""

    stream_id: int
    protocol: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole message; call :meth:`MuxCore.acknowledge` when the application takes it."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN) after its last message."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAborted:
    """The stream was reset: by the peer (``by_peer``) or here for the peer's fault."""

    stream_id: int
    reason: str
    by_peer: bool = True


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer granted credit: a blocked sender on this stream may continue."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    protocol: str
    data: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer is shutting down: open no more streams on this connection."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionDead:
    """No byte from the peer for ``dead_timeout`` seconds."""

    reason: str


MuxEvent = (StreamOpened | MessageReceived | StreamEnded | StreamAborted | WindowUpdated
            | DatagramReceived | GoAwayReceived | ConnectionDead)
