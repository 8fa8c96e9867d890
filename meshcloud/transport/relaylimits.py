"""What a relay allows each peer (sans-IO): circuits at once, and bytes per second.

A relay is any member that can be dialled; it lends its bandwidth to members that cannot.
:class:`RelayLimits` keeps one token bucket and one circuit count per *source* peer (the
node that asked for the circuit), plus a total, so that one member cannot take a relay's
whole uplink. The driver asks :meth:`RelayLimits.open_circuit` before splicing, calls
:meth:`RelayLimits.close_circuit` after, and before forwarding ``n`` bytes of a circuit
waits the seconds :meth:`RelayLimits.take` returns. It reads no clock: ``now`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RelayConfig:
    max_circuits_per_peer: int = 8
    """Circuits one source peer may hold through this relay at once."""
    max_circuits: int = 64
    """Circuits this relay carries at once, all peers together."""
    max_reservations: int = 32
    """Nodes this relay holds reservations for (nodes that cannot be dialled)."""
    bytes_per_s: float = 32 * 1024 * 1024
    """Sustained relayed bytes per second per source peer (both directions together)."""
    burst: float = 4 * 1024 * 1024
    """Bytes a source peer may send at once above the sustained rate."""

    def __post_init__(self) -> None:
        if min(self.max_circuits_per_peer, self.max_circuits, self.max_reservations) < 1:
            raise ValueError("relay limits must allow at least one circuit and reservation")
        if self.bytes_per_s <= 0 or self.burst <= 0:
            raise ValueError("relay rate and burst must be positive")


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` tokens; the seconds to wait before the spent bytes may go (0: now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(slots=True)
class RelayLimits:
    config: RelayConfig = field(default_factory=RelayConfig)
    circuits: dict[bytes, int] = field(default_factory=dict)
    buckets: dict[bytes, TokenBucket] = field(default_factory=dict)
    reservations: set[bytes] = field(default_factory=set)
    refused: int = 0
    relayed_bytes: int = 0

    @property
    def total_circuits(self) -> int:
        return sum(self.circuits.values())

    def reserve(self, peer: bytes) -> str | None:
        """Hold a reservation for ``peer``; the reason if refused."""
        if peer in self.reservations:
            return None
        if len(self.reservations) >= self.config.max_reservations:
            self.refused += 1
            return f"relay holds {self.config.max_reservations} reservations already"
        self.reservations.add(peer)
        return None

    def release(self, peer: bytes) -> None:
        self.reservations.discard(peer)

    def open_circuit(self, source: bytes, target: bytes, now: float) -> str | None:
        """Count a new circuit from ``source`` to ``target``; the reason if refused."""
        reason = None
        if target not in self.reservations:
            reason = "the target holds no reservation with this relay"
        elif self.circuits.get(source, 0) >= self.config.max_circuits_per_peer:
            reason = f"at most {self.config.max_circuits_per_peer} circuits per peer"
        elif self.total_circuits >= self.config.max_circuits:
            reason = f"relay carries {self.config.max_circuits} circuits already"
        if reason is not None:
            self.refused += 1
            return reason
        self.circuits[source] = self.circuits.get(source, 0) + 1
        if source not in self.buckets:
            self.buckets[source] = TokenBucket(self.config.bytes_per_s, self.config.burst,
                                               self.config.burst, now)
        return None

    def close_circuit(self, source: bytes) -> None:
        count = self.circuits.get(source, 0) - 1
        if count <= 0:
            self.circuits.pop(source, None)
            self.buckets.pop(source, None)
        else:
            self.circuits[source] = count

    def take(self, source: bytes, n: int, now: float) -> float:
        """Seconds to wait before forwarding ``n`` bytes of a circuit of ``source``."""
        self.relayed_bytes += n
        bucket = self.buckets.get(source)
        return 0.0 if bucket is None else bucket.take(n, now)

    def to_json(self) -> dict[str, object]:
        return {"reservations": len(self.reservations), "circuits": self.total_circuits,
                "refused": self.refused, "relayed_bytes": self.relayed_bytes}
