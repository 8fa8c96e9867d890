"""IPAM: V-Net ranges and addresses, with no address held by two members.

**Design: claims with deterministic loser re-allocation.** A member's address is a field
of its own member row, which only the member's node writes (so rows never conflict). A
node picks a free address from its own view and writes the claim at once: no round trip,
so allocation works during a partition. Two nodes on either side of a partition may pick
the same address; when their rows meet, every node computes the same owner with
:func:`resolve`: the earliest claim (``claimed_ms``, then the member id) keeps the
address, the other is a *loser*. A loser's address is never routed or handed to a data
plane (:func:`resolve` leaves it out of the owners), and its own node re-allocates it from
the merged view (:func:`allocate`) on its next pass. So no two members ever *hold* one
address in any view, and after a heal each collision costs one re-allocation.

Per-node sub-ranges were the other choice: they avoid collisions but waste the range (a
/24 shared by 20 nodes leaves 12 addresses each, and a node's block must itself be
claimed, which is the same problem one level up). With claims every address is usable,
and the first free address is searched from a point derived from the member id, so two
nodes allocating at once rarely pick the same address to begin with.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from meshcloud.errors import MeshError

MIN_PREFIX = 8
MAX_PREFIX = 30
"""A V-Net has at least two usable addresses (a /30)."""


class VNetError(MeshError):
    """A V-Net request that cannot be done (bad name or range, unknown, exhausted)."""

    code = "bad_request"


class ExhaustedError(VNetError):
    code = "vnet_exhausted"


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """A V-Net range: a private IPv4 network (RFC 1918 or 100.64/10), /8 to /30, given as
    its network address. One clear :class:`VNetError` for anything else."""
    if not isinstance(text, str) or not text or len(text) > 32:
        raise VNetError(f"not an IPv4 range: {str(text)[:40]!r} (want e.g. 10.42.0.0/24)")
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ipaddress.NetmaskValueError:
        raise VNetError(f"bad prefix length in {text!r} (want /{MIN_PREFIX}../{MAX_PREFIX})"
                        ) from None
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise VNetError(f"{text!r} has host bits set; did you mean "
                            f"{ipaddress.IPv4Network(text, strict=False)}?") from None
        raise VNetError(f"not an IPv4 range: {text!r} (want e.g. 10.42.0.0/24)") from None
    if "/" not in text:
        raise VNetError(f"{text!r} needs a prefix length, e.g. {text}/24")
    if not MIN_PREFIX <= network.prefixlen <= MAX_PREFIX:
        raise VNetError(f"{text}: a V-Net is /{MIN_PREFIX} to /{MAX_PREFIX}")
    shared = ipaddress.IPv4Network("100.64.0.0/10")
    if not (network.is_private or network.subnet_of(shared)) or network.is_loopback \
            or network.is_link_local or network.is_multicast:
        raise VNetError(f"{text} is not a private range (use 10/8, 172.16/12, 192.168/16 "
                        "or 100.64/10)")
    return network


def overlaps(network: ipaddress.IPv4Network,
             others: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """The first of ``others`` that overlaps ``network``, if any."""
    for other in others:
        if network.overlaps(other):
            return other
    return None


def usable(network: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last assignable address (as integers): not the network nor broadcast."""
    return int(network.network_address) + 1, int(network.broadcast_address) - 1


Claim = tuple[int, int]
"""(address, claimed_ms) of one member."""


def resolve(claims: Mapping[str, Claim]) -> tuple[dict[int, str], set[str]]:
    """Who holds each claimed address, and the losers that must re-allocate.

    The owner of an address is the member with the smallest ``(claimed_ms, member id)``
    among those claiming it; the result depends only on the set of claims, so every node
    with the same rows computes the same owners. Address 0 (shares the host's address) is
    not a claim.
    """
    owners: dict[int, str] = {}
    best: dict[int, tuple[int, str]] = {}
    losers: set[str] = set()
    for member, (address, claimed_ms) in claims.items():
        if address == 0:
            continue
        rank = (claimed_ms, member)
        current = best.get(address)
        if current is None or rank < current:
            if current is not None:
                losers.add(current[1])
            best[address] = rank
            owners[address] = member
        else:
            losers.add(member)
    return owners, losers


def _start(network: ipaddress.IPv4Network, member: str) -> int:
    low, high = usable(network)
    size = high - low + 1
    digest = hashlib.blake2b(member.encode(), digest_size=8).digest()
    return low + int.from_bytes(digest, "big") % size


def allocate(network: ipaddress.IPv4Network, member: str, taken: Iterable[int]) -> int:
    """A free address for ``member``: the first one not in ``taken``, searched upward
    (wrapping) from a point derived from the member id. :class:`ExhaustedError` when
    none is left."""
    low, high = usable(network)
    busy = set(taken)
    size = high - low + 1
    if len(busy.intersection(range(low, high + 1))) >= size:
        raise ExhaustedError(f"V-Net range {network} is full ({size} addresses in use)")
    start = _start(network, member)
    for step in range(size):
        candidate = low + (start - low + step) % size
        if candidate not in busy:
            return candidate
    raise ExhaustedError(f"V-Net range {network} is full ({size} addresses in use)")


def interface_name(vnet: str) -> str:
    """The interface a node owns for ``vnet``: ``mc-<name>``, at most 15 characters (a
    longer name is cut and given a short hash so two V-Nets never share one)."""
    name = f"mc-{vnet}"
    if len(name) <= 15:
        return name
    digest = hashlib.blake2b(vnet.encode(), digest_size=3).hexdigest()
    return f"mc-{vnet[:6]}-{digest[:5]}"


def replica_links(vnet: str) -> str:
    """The prefix of the host ends of ``vnet``'s replica veths on a node: ``mv`` and six
    hex digits of the V-Net's name (iptables matches them all as ``PREFIX+``)."""
    return "mv" + hashlib.blake2b(vnet.encode(), digest_size=3).hexdigest()


def replica_link(vnet: str, node: bytes, replica: str) -> str:
    """The host end of one replica's veth into ``vnet``: the V-Net's prefix and seven hex
    digits of (node, replica), 15 characters."""
    digest = hashlib.blake2b(node + b"/" + replica.encode(), digest_size=4).hexdigest()
    return replica_links(vnet) + digest[:7]


def check_name(name: object) -> str:
    """A V-Net name: 1..32 of a-z, 0-9 and '-', starting with a letter (it becomes an
    interface name and a DNS label)."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", name) \
            or name.endswith("-"):
        raise VNetError(f"bad V-Net name {str(name)[:40]!r}: 1-32 of a-z, 0-9 and '-', "
                        "starting with a letter")
    return name
