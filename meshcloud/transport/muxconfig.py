"""Multiplexer settings: window, message size, stream limit, keepalive timing, with presets.

The keepalive pair is the one to think about: a peer is declared dead ``dead_timeout``
seconds after its last byte, and pinged after every ``keepalive_interval`` of silence, so
an idle connection costs one small frame per interval each way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

INITIAL_WINDOW = 256 * 1024
"""Credit every stream starts with in both directions (before any WINDOW_UPDATE): enough
for a typical request to go out with the OPEN frame, and the smallest window we accept."""

MAX_WINDOW = 2**31 - 1
"""Largest credit a sender may hold (as HTTP/2); more is a protocol error."""


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Multiplexer settings. Defaults suit a LAN; see :meth:`lan` and :meth:`phone`."""

    stream_window: int = 1024 * 1024
    """Receive window per stream (bytes): what a peer may send before we consume it. 1 MiB
    keeps a loopback or LAN link busy (bandwidth-delay product) without letting one
    stream hoard memory."""

    max_message: int = 16 * 1024 * 1024 + 64 * 1024
    """Largest message on a stream: the codec's 16 MiB limit plus envelope headroom."""

    max_streams: int = 1024
    """Concurrent streams the peer may have open towards us; further OPENs are reset."""

    keepalive_interval: float = 1.0
    """Seconds of silence from the peer before we PING it (and between PINGs)."""

    dead_timeout: float = 4.0
    """Seconds of silence after which the peer is declared dead. 4 s notices a frozen peer
    well within 5 s while tolerating three lost-in-queue PINGs' worth of scheduling hiccups."""

    datagram_backlog: int = 1024 * 1024
    """Outgoing bytes queued above which new datagrams are dropped (best effort)."""

    max_buffered: int = 64 * 1024 * 1024
    """Received message bytes one connection may hold before the application reads them
    (reassembled or waiting in a stream). What the peer may send is bounded by the credit
    we gave: stream credit is granted within :attr:`credit_budget`, new streams are
    accepted within :attr:`open_budget`, the room left is for the one stream whose reader
    waits (see :class:`~meshcloud.transport.mux.MuxCore`), and the socket is not read
    beyond this bound (back-pressure through TCP) should that ever not suffice."""

    @property
    def open_budget(self) -> int:
        """Bytes (buffered plus credit the peer holds) above which a new stream from the
        peer is reset as busy (it would bring :data:`INITIAL_WINDOW` of credit unasked):
        room for one whole message and two windows is kept below :attr:`max_buffered`."""
        return self.max_buffered - self.max_message - 2 * self.stream_window

    @property
    def credit_budget(self) -> int:
        """Bytes (buffered plus credit the peer holds) above which stream credit is
        withheld: half of :attr:`open_budget`, so a burst of new streams fits the rest."""
        return self.open_budget // 2

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.stream_window <= MAX_WINDOW:
            raise ValueError(f"stream_window must be in [{INITIAL_WINDOW}, {MAX_WINDOW}]")
        if self.max_message < 1 or self.max_streams < 1 or self.datagram_backlog < 0:
            raise ValueError("max_message and max_streams must be positive")
        if not 0 < self.keepalive_interval < self.dead_timeout:
            raise ValueError("need 0 < keepalive_interval < dead_timeout")
        if self.credit_budget < INITIAL_WINDOW:
            raise ValueError("max_buffered must exceed max_message + 2 * stream_window "
                             f"by at least {2 * INITIAL_WINDOW} bytes")

    @classmethod
    def lan(cls) -> MuxConfig:
        """Home or office network: the defaults."""
        return cls()

    @classmethod
    def phone(cls) -> MuxConfig:
        """A phone on Wi-Fi or mobile data: smaller windows (RAM), and keepalives sparse
        enough to let the radio sleep, at the cost of noticing a dead peer later (20 s)."""
        return dataclasses.replace(cls(), stream_window=INITIAL_WINDOW, max_streams=256,
                                   keepalive_interval=5.0, dead_timeout=20.0,
                                   datagram_backlog=256 * 1024,
                                   max_buffered=32 * 1024 * 1024)
