"""Inbound handshake slots, sans-IO: who may start a handshake, and whom to shed for it.

Every accepted socket needs a slot while its handshake runs. A flood of silent sockets
(connected, saying nothing) must not keep members out, and members on one machine share
one source address (127.0.0.1) with whoever floods from it. The rules:

* at most ``total`` handshakes at once, and at most ``per_source`` from one address
  (``per_source < total``, so one address never holds every slot);
* a socket is **silent** until its first handshake message arrives (:meth:`heard`), and the
  driver ends a silent socket after a short first-message deadline;
* when a new socket finds its source (or the whole table) full, the **oldest silent**
  handshake of that source (or of the busiest source) is shed to make room; only if none
  is silent is the new socket refused. A real peer sends its first message with the
  connection, so it stops being silent at once and is never shed by a flood; a flooder
  only ever evicts its own kind.

The driver (:mod:`~meshcloud.transport.tcp`) passes opaque slot keys and acts on the
answers (closes the shed sockets). Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Slot:
    source: str
    silent: bool = True


@dataclass(slots=True)
class Admission:
    """The answer to :meth:`HandshakeSlots.admit`."""

    admitted: bool
    shed: list[int] = field(default_factory=list)
    """Keys of silent handshakes to end now (their slots went to the new socket)."""


class HandshakeSlots:
    """Bounded table of inbound handshakes in progress (see the module docstring)."""

    def __init__(self, total: int, per_source: int) -> None:
        if total < 1 or not 1 <= per_source <= total:
            raise ValueError("need total >= 1 and 1 <= per_source <= total")
        self.total = total
        self.per_source = per_source
        self._slots: OrderedDict[int, _Slot] = OrderedDict()  # oldest first
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def count(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def silent(self) -> int:
        return sum(1 for slot in self._slots.values() if slot.silent)

    def admit(self, key: int, source: str) -> Admission:
        """A socket from ``source`` wants a slot under ``key`` (a new, unused key)."""
        if key in self._slots:
            raise ValueError(f"slot key {key} is already in use")
        shed: list[int] = []
        if self.count(source) >= self.per_source:
            victim = self._oldest_silent(source)
            if victim is None:
                return Admission(admitted=False)
            shed.append(victim)
            self.release(victim)
        elif len(self._slots) >= self.total:
            busiest = max(self._by_source, key=lambda s: self._by_source[s])
            victim = self._oldest_silent(busiest)
            if victim is None:
                victim = self._oldest_silent(None)
            if victim is None:
                return Admission(admitted=False)
            shed.append(victim)
            self.release(victim)
        self._slots[key] = _Slot(source)
        self._by_source[source] = self.count(source) + 1
        return Admission(admitted=True, shed=shed)

    def heard(self, key: int) -> None:
        """The handshake's first message arrived: it is no longer silent (never shed)."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.silent = False

    def release(self, key: int) -> None:
        """The handshake ended (done, failed, timed out or shed). Unknown keys are ignored."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        left = self._by_source[slot.source] - 1
        if left:
            self._by_source[slot.source] = left
        else:
            del self._by_source[slot.source]

    def _oldest_silent(self, source: str | None) -> int | None:
        for key, slot in self._slots.items():
            if slot.silent and (source is None or slot.source == source):
                return key
        return None


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
