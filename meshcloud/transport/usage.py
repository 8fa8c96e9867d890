"""What each protocol costs on the wire: streams opened and message bytes, per protocol name.

The transport counts here as messages pass (one dict lookup each), so an idle node can tell
which service sends what (``meshcloud status --json`` → ``transport.protocols``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class ProtocolUsage:
    """Counts for one protocol name (streams and datagrams alike)."""

    streams_opened: int = 0
    """Streams of this protocol opened here (by us) or accepted (opened by peers)."""
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    dials: int = 0
    """Connections this node dialled because this protocol had none to use (a stream
    opened to an unconnected peer; for datagrams, a dial to send them or to prove their
    sender): what each service costs in handshakes."""


class UsageTable:
    """:class:`ProtocolUsage` by protocol name; a bounded number of names (peers choose the
    names of their streams and datagrams: unknown ones are already refused, and the table
    never holds more than ``limit`` names, the rest counted under ``"other"``)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.by_protocol: dict[str, ProtocolUsage] = {}

    def of(self, protocol: str) -> ProtocolUsage:
        usage = self.by_protocol.get(protocol)
        if usage is None:
            if len(self.by_protocol) >= self.limit:
                protocol = "other"
                usage = self.by_protocol.get(protocol)
                if usage is not None:
                    return usage
            usage = self.by_protocol[protocol] = ProtocolUsage()
        return usage

    def sent(self, protocol: str, size: int) -> None:
        usage = self.of(protocol)
        usage.messages_sent += 1
        usage.bytes_sent += size

    def received(self, protocol: str, size: int) -> None:
        usage = self.of(protocol)
        usage.messages_received += 1
        usage.bytes_received += size

    def dialled(self, protocol: str) -> None:
        self.of(protocol).dials += 1

    def opened(self, protocol: str) -> None:
        self.of(protocol).streams_opened += 1

    def to_json(self) -> dict[str, dict[str, int]]:
        return {name: asdict(usage) for name, usage in sorted(self.by_protocol.items())}
