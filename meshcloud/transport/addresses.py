"""Transport addresses: ``host:port`` for IPv4 and names, ``[v6]:port`` for IPv6.

The address book stores them as strings (they travel in handshakes, DHT records and
invites); this module is the one place that parses and formats them.
"""

from __future__ import annotations

from meshcloud.errors import ConfigError

MAX_ADDRESS = 256


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:7000"`` → ``("127.0.0.1", 7000)``; ``"[::1]:7000"`` → ``("::1", 7000)``."""
    text = address.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    if not text or len(text) > MAX_ADDRESS:
        raise ConfigError(f"not a transport address: {address!r}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"not a transport address (want [v6]:port): {address!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"not a transport address (want host:port): {address!r}")
    if not host:
        raise ConfigError(f"transport address has no host: {address!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"transport address has a bad port: {address!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"transport address port out of range: {address!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


RELAY_SCHEME = "relay://"
"""``relay://<node id hex>``: "reach me through this member" (a node behind NAT)."""


def relay_address(relay: bytes) -> str:
    return f"{RELAY_SCHEME}{relay.hex()}"


def relay_of(address: str) -> bytes | None:
    """The relay's node id in a ``relay://`` address; None for any other address."""
    if not address.startswith(RELAY_SCHEME):
        return None
    try:
        node_id = bytes.fromhex(address[len(RELAY_SCHEME):])
    except ValueError:
        raise ConfigError(f"not a relay address: {address!r}") from None
    if len(node_id) != 32:
        raise ConfigError(f"not a relay address: {address!r}")
    return node_id
