"""Network helpers of the agent: the real transport, and the addresses others can reach."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable

import meshcloud
from meshcloud.auth import MeshAuthenticator
from meshcloud.config import NodeConfig, parse_host_port
from meshcloud.identity.keys import SigningKey
from meshcloud.transport.base import Transport

TransportFactory = Callable[[SigningKey, MeshAuthenticator, NodeConfig], Transport]


def tcp_transport(key: SigningKey, authenticator: MeshAuthenticator,
                  config: NodeConfig) -> Transport:
    from meshcloud.transport.tcp import TcpConfig, TcpTransport

    base = TcpConfig.phone() if config.profile == "phone" else TcpConfig.lan()
    tcp_config = dataclasses.replace(base, agent_version=meshcloud.__version__,
                                     max_connections=config.max_connections)
    return TcpTransport(key, authenticator, listen=config.listen, config=tcp_config)


def local_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (best effort, no traffic sent)."""
    found: list[str] = []
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            address = info[4][0]
            if not address.startswith("127.") and address not in found:
                found.append(address)
    except OSError:
        pass
    return found or ["127.0.0.1"]


def expand_wildcards(addresses: list[str], host_hint: str | None = None) -> list[str]:
    """Replace 0.0.0.0 / :: in listen addresses with reachable ones."""
    out: list[str] = []
    for address in addresses:
        if "://" in address:  # another transport's address form (mem://, later others)
            out.append(address)
            continue
        host, port = parse_host_port(address)
        if host in ("0.0.0.0", "::"):
            hosts = local_addresses()
            if host_hint:
                hint_host = host_hint.rpartition(":")[0].strip("[]")
                if hint_host and hint_host not in hosts:
                    hosts = [hint_host, *hosts]
            out.extend(f"{h}:{port}" for h in hosts)
        else:
            out.append(address)
    return list(dict.fromkeys(out))
