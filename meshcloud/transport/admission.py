"""Inbound handshake slots, sans-IO: who may start a handshake, and whom to shed for it.

Every accepted socket needs a slot while its handshake runs. A flood of silent sockets
(connected, saying nothing) must not keep members out, and members on one machine share
one source address (127.0.0.1) with whoever floods from it. So a socket lives in one of
two pools:

* **silent**: accepted, first handshake message not yet read. Cheap (a file descriptor and
  a waiting task) and short-lived: the driver closes it after ``first_message_timeout``.
  At most ``silent_per_source`` per address and ``silent_total`` in all; a newcomer that
  finds its pool full **sheds the oldest silent socket** (of its own address, else of the
  busiest one), skipping sockets whose first bytes already wait unread (``ready``). So a
  flooder only ever evicts its own kind, and a real dialer (which sends its first message
  with the connection) is never shed unless a whole pool of newer sockets arrives before
  its first bytes do.
* **active**: its first message arrived (:meth:`promote`), so the expensive part (Diffie-
  Hellman, signature checks) runs. At most ``per_source`` per address and ``total`` in
  all, ``per_source < total`` so one address never holds every slot; a socket that finds
  no active slot is closed (its dialer retries).

The driver (:mod:`~meshcloud.transport.tcp`) passes opaque slot keys and acts on the
answers (closes shed sockets). Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Slot:
    source: str
    silent: bool = True


class HandshakeSlots:
    """Bounded tables of inbound handshakes in progress (see the module docstring)."""

    def __init__(self, *, total: int, per_source: int, silent_total: int,
                 silent_per_source: int) -> None:
        if not 1 <= per_source <= total or not 1 <= silent_per_source <= silent_total:
            raise ValueError("need 1 <= per_source <= total (for each pool)")
        self.total = total
        self.per_source = per_source
        self.silent_total = silent_total
        self.silent_per_source = silent_per_source
        self._slots: OrderedDict[int, _Slot] = OrderedDict()  # oldest first
        self._count: dict[tuple[str, bool], int] = {}  # (source, silent) -> slots
        self._silent = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def silent(self) -> int:
        return self._silent

    @property
    def active(self) -> int:
        return len(self._slots) - self._silent

    def count(self, source: str, *, silent: bool) -> int:
        return self._count.get((source, silent), 0)

    def admit(self, key: int, source: str,
              ready: Callable[[int], bool] = lambda key: False) -> list[int]:
        """A new socket from ``source`` under ``key`` (unused): it joins the silent pool.
        Returns the keys of silent sockets shed to make room (the caller closes them).
        ``ready(key)`` tells whether a silent socket's first bytes already wait unread:
        such a socket is about to be promoted and is shed only if no other can be."""
        if key in self._slots:
            raise ValueError(f"slot key {key} is already in use")
        shed = []
        if self.count(source, silent=True) >= self.silent_per_source:
            shed.append(self._victim(source, ready))
        elif self._silent >= self.silent_total:
            busiest = max((s for (s, silent) in self._count if silent),
                          key=lambda s: self.count(s, silent=True))
            shed.append(self._victim(busiest, ready))
        for victim in shed:
            self.release(victim)
        self._slots[key] = _Slot(source)
        self._add(source, True, 1)
        return shed

    def promote(self, key: int) -> bool:
        """The socket's first message arrived: move it to the active pool. False if the
        active pool (or its source's share) is full: the caller closes the socket."""
        slot = self._slots.get(key)
        if slot is None or not slot.silent:
            return slot is not None
        if (self.active >= self.total
                or self.count(slot.source, silent=False) >= self.per_source):
            return False
        self._add(slot.source, True, -1)
        slot.silent = False
        self._add(slot.source, False, 1)
        return True

    def release(self, key: int) -> None:
        """The handshake ended (done, failed, timed out or shed). Unknown keys are ignored."""
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._add(slot.source, slot.silent, -1)

    def _add(self, source: str, silent: bool, delta: int) -> None:
        left = self._count.get((source, silent), 0) + delta
        if left:
            self._count[(source, silent)] = left
        else:
            self._count.pop((source, silent), None)
        if silent:
            self._silent += delta

    def _victim(self, source: str, ready: Callable[[int], bool]) -> int:
        fallback = None
        for key, slot in self._slots.items():
            if slot.silent and slot.source == source:
                if not ready(key):
                    return key
                if fallback is None:
                    fallback = key
        assert fallback is not None, "a full silent pool has a silent socket"
        return fallback


@dataclass(slots=True)
class TransportCounters:
    """What went wrong, counted once per connection (each failure is also logged once).

    A failure of one connection (any error in its handshake, its dial, its tasks or a
    stream handler) ends that connection or stream only and lands in one of these."""

    handshake_errors: int = 0
    """Handshakes (either way) ended by damaged or malformed bytes."""
    handshakes_refused: int = 0
    """Handshakes (either way) ended by admission: no valid certificate, wrong node..."""
    handshakes_timed_out: int = 0
    """Handshakes that did not finish within ``handshake_timeout``."""
    handshakes_shed: int = 0
    """Inbound sockets closed without a handshake: no slot, shed for a newer one, or
    silent past ``first_message_timeout``."""
    dials_failed: int = 0
    """Dials that did not end in a connection (unreachable, refused, broken handshake)."""
    connection_errors: int = 0
    """Established connections ended by a protocol error or an unexpected internal error."""
    handler_errors: int = 0
    """Stream handlers that raised an unexpected exception (their stream was aborted)."""
    buffer_resets: int = 0
    """Streams reset because their connection was wedged at its buffer limit while a
    reader waited (see ``MuxCore.relieve``): should stay 0 outside of abuse."""
    bytes_sent: int = 0
    """Bytes written to peer sockets (handshakes included)."""
    bytes_received: int = 0
    """Bytes read from peer sockets (handshakes included)."""
    packets_sent: int = 0
    """Noise messages written (each a batch of frames; handshake messages included)."""
    packets_received: int = 0
    """Noise messages read (handshake messages included)."""
    connections_opened: int = 0
    """Connections established, either way."""
    idle_closes: int = 0
    """Connections retired after ``idle_timeout`` without a stream or any traffic."""
    evictions: int = 0
    """Idle connections retired, least recently used first, to stay within
    ``max_connections``."""
    udp_refused: int = 0
    """Sealed UDP datagrams refused: malformed, forged, replayed, or from a sender that
    did not prove its membership (:mod:`~meshcloud.transport.udp`)."""
    udp_dropped: int = 0
    """Sealed UDP datagrams the socket would not take (buffer full, no route)."""
    udp_unreachable: int = 0
    """ICMP errors for our datagrams (port or host unreachable): each a hint, published as
    :class:`~meshcloud.transport.base.PeerUnreachable`, that the peer's process or host
    is gone (what a connection reset used to tell)."""
