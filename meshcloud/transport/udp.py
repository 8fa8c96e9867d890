"""The sealed datagram path of the TCP transport: UDP beside each TCP listener (same host
and port), the trio driver of :mod:`~meshcloud.transport.sealed`.

Membership probes, acks and gossip go to any member as one UDP packet, sealed with the
pair's key, so a node needs no standing connection per member (connections carry streams
only and close when idle). What decides who may send:

* a peer's keys are learnt only from a connection whose handshake checked its membership
  certificate (:meth:`DatagramPath.learn`, called by the transport on adoption; joining
  peers never); its certificate is checked again through the node's ``Authenticator`` at
  most every :data:`RECHECK` seconds while datagrams flow, so a revocation stops them too;
* a datagram from a sender whose keys we do not have (we restarted, or forgot it) is held
  (a few per sender) while a connection to the node it names is dialled (the addresses of
  the known node whose id starts with its tag, else the packet's source; it must answer
  as a node with that tag); once the handshake proved it, the held datagrams are opened;
  otherwise they are dropped;
* packets go to the source address of the peer's last *authenticated* datagram, else to
  the address we last reached it at directly over TCP (a dial, not relayed or punched: an
  address book entry may be a private address behind a NAT); with neither, the
  connection carries them (the peer, having dialled us, sends first and tells us);
* :meth:`send` returns False where the transport should use a connection instead: keys
  unknown, no direct address (relayed peers), too big, or UDP that seems filtered: more
  than :data:`UNANSWERED` datagrams to a peer over more than :data:`GIVE_UP` seconds with
  none back from it, or more than :data:`QUIET_SENDS` datagrams sent over :data:`GIVE_UP`
  seconds while none came from anyone. Then connections carry those datagrams for
  :data:`FALLBACK` seconds, and UDP still carries a copy (best effort): a peer that was
  only slow to answer (a starved loop) still gets them at once rather than behind a
  dial, and its first datagram back ends its fallback (any datagram received ends the
  node-wide one).

Refused datagrams are counted (``udp_refused``) and logged at debug level only (anyone can
send UDP); nothing a refused packet holds is kept.

**Unreachable hints.** The sockets ask the kernel for the ICMP errors our datagrams cause
(``IP_RECVERR``): a datagram to a killed process comes back as "port unreachable", to a
host gone from its LAN as "host unreachable". Such an error names the address the datagram
went to; the peer last reached there is published as
:class:`~meshcloud.transport.base.PeerUnreachable` (at most once per :data:`HINT_INTERVAL`
per peer), which membership takes as what a connection reset used to tell it: probe that
peer now. A hint is no verdict (the probe still has to fail), so a forged error costs one
probe.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from meshcloud.errors import AuthError, MeshError
from meshcloud.identity.keys import short_id
from meshcloud.transport.addresses import format_address, parse_address
from meshcloud.transport.base import PeerUnreachable
from meshcloud.transport.peers import NodeId, PeerAuth
from meshcloud.transport.sealed import (
    MAX_PACKET,
    SENDER_TAG,
    DatagramRefused,
    SealCore,
    UnknownSender,
)

if TYPE_CHECKING:
    from meshcloud.transport.tcp import TcpTransport

logger = logging.getLogger(__name__)

RECHECK = 1.0
"""Seconds a peer's certificate check is trusted before datagrams check it again."""
GIVE_UP = 10.0
"""Seconds of sending with no datagram back before datagrams take a connection instead
(UDP filtered), with :data:`UNANSWERED` / :data:`QUIET_SENDS`."""
UNANSWERED = 3
"""Datagrams in a row to one peer with none back from it (a probe gets an ack: in a
healthy pair this count stays at 1 or 2, however long apart the probes are)."""
QUIET_SENDS = 20
"""Datagrams in a row to anyone while none came from anyone (our UDP is cut)."""
FALLBACK = 60.0
"""Seconds datagrams to such a peer take a connection (as well as UDP) unless it answers."""
HELD_PER_SENDER = 8
HELD_SENDERS = 64
AUTHENTICATING = 8
"""Dials at once to prove unknown senders; more unknown senders are dropped meanwhile."""
FAILED_MEMORY = 10.0
"""Seconds an unknown sender whose proof failed is not dialled again."""
RECEIVE_BATCH = 64
PROOF_CAUSE = "sealed-datagram proof"
"""What a dial to prove an unknown datagram sender is counted as (``usage`` dials)."""
HINT_INTERVAL = 1.0
"""Seconds between two :class:`PeerUnreachable` hints about one peer."""

IP_RECVERR = 11  # <linux/in.h>
IPV6_RECVERR = 25  # <linux/in6.h>
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0) if sys.platform.startswith("linux") else 0
"""0 where the kernel keeps no error queue for us (then no hints)."""
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
UNREACHABLE = {errno.ECONNREFUSED: "port unreachable", errno.EHOSTUNREACH: "host unreachable",
               errno.ENETUNREACH: "network unreachable"}
"""ICMP errors that hint the peer is gone (errno as the kernel reports them)."""


def icmp_error(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The errno of an ICMP error read from a socket's error queue (``recvmsg`` with
    ``MSG_ERRQUEUE``: its ancillary data), or None if it holds no ICMP error."""
    for level, kind, data in ancdata:
        if not ((level == socket.IPPROTO_IP and kind == IP_RECVERR)
                or (level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR)):
            continue
        if len(data) < _EXTENDED_ERR.size:
            continue
        code, origin = _EXTENDED_ERR.unpack_from(data)[:2]
        if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            return int(code)
    return None


def _ask_for_errors(sock: socket.socket) -> None:
    """Queue the ICMP errors our datagrams cause on ``sock`` (Linux; elsewhere none)."""
    if not MSG_ERRQUEUE:
        return
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError as exc:
        logger.debug("no ICMP errors on the UDP socket: %s", exc)


class DatagramPath:
    """UDP sockets, sealed packets and the peers allowed to send them. See the module doc."""

    def __init__(self, transport: TcpTransport, boot: int | None = None) -> None:
        self.transport = transport
        self.core = SealCore(transport.local_id, transport.key.to_curve25519_private(),
                             time.time_ns() if boot is None else boot)
        self.sockets: list[socket.socket] = []
        self._peers: dict[NodeId, PeerAuth] = {}
        self._checked: dict[NodeId, float] = {}
        self._reply_to: dict[NodeId, Any] = {}  # source of its last authenticated datagram
        self._dialled: dict[NodeId, Any] = {}  # where we reached it directly over TCP
        self._unanswered: dict[NodeId, tuple[float, int]] = {}  # since, how many
        self._quiet_since = 0.0  # first datagram sent since the last one from anyone
        self._quiet_sends = 0  # datagrams sent since the last one from anyone
        self._all_fallback_until = 0.0
        self._fallback_until: dict[NodeId, float] = {}
        self._held: dict[bytes, deque[tuple[bytes, Any]]] = {}  # by sender tag
        self._authenticating: set[bytes] = set()
        self._failed: dict[bytes, float] = {}
        self._hinted: dict[NodeId, float] = {}  # last PeerUnreachable published

    # --- sockets ------------------------------------------------------------------------

    def bind(self, listeners: list[socket.socket]) -> None:
        """A UDP socket on each listener's address; a port taken for UDP is skipped (its
        peers then use connections) and said once."""
        for listener in listeners:
            sockaddr = listener.getsockname()
            sock = socket.socket(listener.family, socket.SOCK_DGRAM)
            try:
                if listener.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.setblocking(False)
                _ask_for_errors(sock)
            except OSError as exc:
                sock.close()
                logger.warning("no sealed datagrams on %s (UDP: %s): members use "
                               "connections for gossip", format_address(*sockaddr[:2]), exc)
                continue
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def receive_loop(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)  # an error queued wakes it too
            self.read_errors(sock)
            for _ in range(RECEIVE_BATCH):
                try:
                    packet, source = sock.recvfrom(MAX_PACKET)
                except BlockingIOError:
                    break
                except OSError as exc:  # an ICMP error reported on the socket: not fatal
                    logger.debug("UDP receive: %s", exc)
                    continue
                self.on_packet(packet, source)
            await trio.lowlevel.checkpoint()

    def read_errors(self, sock: socket.socket) -> None:
        """Read the ICMP errors queued on ``sock``; each names where a datagram went, and
        the peer last reached there gets a :class:`PeerUnreachable` hint."""
        if not MSG_ERRQUEUE:
            return
        for _ in range(RECEIVE_BATCH):
            try:
                _, ancdata, _, destination = sock.recvmsg(1, 512, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # no error queue here (not Linux), or nothing queued
                if exc.errno not in UNREACHABLE:
                    return
                continue  # the pending error itself, reported once: read the queue on
            code = icmp_error(ancdata)
            if code is None or code not in UNREACHABLE or not destination:
                continue
            self.transport.counters.udp_unreachable += 1
            peer = self._peer_at(destination)
            if peer is None:
                continue
            # nobody listens there now: until the peer is heard from again, its datagrams
            # take a connection (dialled at its announced addresses: a restarted peer may
            # listen elsewhere)
            for table in (self._reply_to, self._dialled):
                if peer in table and tuple(table[peer][:2]) == tuple(destination[:2]):
                    del table[peer]
            now = trio.current_time()
            if now - self._hinted.get(peer, -HINT_INTERVAL) < HINT_INTERVAL:
                continue
            self._hinted[peer] = now
            logger.debug("datagram to %s: %s", short_id(peer), UNREACHABLE[code])
            self.transport.publish(PeerUnreachable(node_id=peer, reason=UNREACHABLE[code]))

    def _peer_at(self, address: Any) -> NodeId | None:
        """The peer whose datagrams go to ``address`` now (None if nobody's)."""
        where = tuple(address[:2])
        for node_id in {**self._dialled, **self._reply_to}:
            destination = self._destination(node_id)
            if destination is not None and tuple(destination[:2]) == where:
                return node_id
        return None

    # --- peers --------------------------------------------------------------------------

    def learn(self, peer: PeerAuth, dialled: str | None = None) -> None:
        """``peer``'s membership was just checked by a handshake: it may send datagrams.
        ``dialled``: the address we reached it at directly over TCP (not relayed or
        punched), where its UDP is too."""
        if peer.joining:
            return
        sockaddr = _sockaddr(dialled) if dialled is not None else None
        if sockaddr is not None:
            self._dialled[peer.node_id] = sockaddr
        try:
            self.core.add_peer(peer.node_id, peer.node_public)
        except ValueError as exc:
            logger.debug("no sealed datagrams with %s: %s", short_id(peer.node_id), exc)
            return
        self._peers[peer.node_id] = peer
        self._checked[peer.node_id] = trio.current_time()
        self._failed.pop(peer.node_id, None)
        held = self._held.pop(peer.node_id[:SENDER_TAG], None)
        for packet, source in held or ():
            self.on_packet(packet, source, retry=False)

    def forget(self, node_id: NodeId) -> None:
        """Datagrams from and to ``node_id`` need a new handshake (revoked, disconnected)."""
        self.core.forget(node_id)
        for table in (self._peers, self._checked, self._reply_to, self._dialled, self._unanswered,
                      self._fallback_until, self._hinted):
            table.pop(node_id, None)

    def knows(self, node_id: NodeId) -> bool:
        return self.core.knows(node_id)

    def _still_member(self, node_id: NodeId) -> bool:
        peer = self._peers.get(node_id)
        if peer is None or not self.core.knows(node_id):
            self.forget(node_id)
            return False
        now = trio.current_time()
        if now - self._checked.get(node_id, -RECHECK) < RECHECK:
            return True
        try:
            self.transport.authenticator.check_peer(peer, we_dialed=True)
        except AuthError as exc:
            logger.info("no more datagrams with %s: %s", short_id(node_id), exc)
            self.forget(node_id)
            return False
        self._checked[node_id] = now
        return True

    # --- sending ------------------------------------------------------------------------

    def send(self, peer: NodeId, protocol: str, data: bytes | bytearray | memoryview) -> bool:
        """Seal and send one datagram; False when a connection should carry it (too).

        While UDP to ``peer`` seems cut (the fallback), the datagram goes over UDP as well:
        a peer that was only slow to answer (a starved loop, a backlog) gets it at once
        instead of behind a dial, and its first datagram back ends the fallback."""
        if not self.sockets or not self.core.knows(peer):
            return False
        destination = self._destination(peer)
        if destination is None or not self._still_member(peer):
            return False
        now = trio.current_time()
        if self._falling_back(peer, now) or self._gives_up(peer, now):
            self._transmit(peer, destination, protocol, data)
            return False
        return self._transmit(peer, destination, protocol, data)

    def _falling_back(self, peer: NodeId, now: float) -> bool:
        until = self._fallback_until.get(peer)
        if until is not None:
            if now < until:
                return True
            del self._fallback_until[peer]
        return now < self._all_fallback_until

    def _gives_up(self, peer: NodeId, now: float) -> bool:
        """Count one more datagram sent; True once UDP seems cut (to ``peer``, or to
        everyone): the fallback starts."""
        since, count = self._unanswered.get(peer, (now, 0))
        self._unanswered[peer] = (since, count + 1)
        if count + 1 > UNANSWERED and now - since > GIVE_UP:
            logger.info("no datagram back from %s for %.0f s: its datagrams take a "
                        "connection too for %.0f s", short_id(peer), now - since, FALLBACK)
            self._fallback_until[peer] = now + FALLBACK
            del self._unanswered[peer]
            return True
        if self._quiet_sends == 0:
            self._quiet_since = now
        self._quiet_sends += 1
        if self._quiet_sends > QUIET_SENDS and now - self._quiet_since > GIVE_UP:
            logger.warning("no datagram from any member for %.0f s: datagrams take "
                           "connections too for %.0f s", now - self._quiet_since, FALLBACK)
            self._all_fallback_until = now + FALLBACK
            self._quiet_sends = 0
            return True
        return False

    def _transmit(self, peer: NodeId, destination: Any, protocol: str,
                  data: bytes | bytearray | memoryview) -> bool:
        """Seal and send over UDP; False if it cannot go as one packet (too big, no
        socket of the destination's family)."""
        try:
            packet = self.core.seal(peer, protocol, data)
        except ValueError:  # too big for one UDP packet
            return False
        sock = self._socket_for(destination)
        if sock is None:
            return False
        counters = self.transport.counters
        for attempt in (1, 2):
            try:
                sock.sendto(packet, destination)
                break
            except OSError as exc:
                if exc.errno in UNREACHABLE and attempt == 1:
                    # an earlier datagram's ICMP error, reported on this call: read the
                    # queue (a hint for that datagram's peer), then send this one
                    self.read_errors(sock)
                    continue
                counters.udp_dropped += 1  # full buffer, no route: best effort, dropped
                logger.debug("UDP to %s dropped: %s", short_id(peer), exc)
                return True
        counters.bytes_sent += len(packet)
        counters.packets_sent += 1
        self.transport.usage.sent(protocol, len(data))
        return True

    def _socket_for(self, destination: Any) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
        for sock in self.sockets:
            if sock.family == family:
                return sock
        return None

    def _destination(self, peer: NodeId) -> Any:
        known = self._reply_to.get(peer)
        return known if known is not None else self._dialled.get(peer)

    # --- receiving ----------------------------------------------------------------------

    def on_packet(self, packet: bytes, source: Any, *, retry: bool = True) -> None:
        transport = self.transport
        try:
            opened = self.core.open(packet)
        except UnknownSender as exc:
            if retry:
                self._hold(exc.sender, packet, source)
            else:
                transport.counters.udp_refused += 1
            return
        except DatagramRefused as exc:
            transport.counters.udp_refused += 1
            logger.debug("refused a datagram from %s: %s", source[0], exc)
            return
        sender = opened.sender
        if not self._still_member(sender):
            transport.counters.udp_refused += 1
            return
        self._reply_to[sender] = source
        self._unanswered.pop(sender, None)
        self._fallback_until.pop(sender, None)
        self._quiet_sends, self._all_fallback_until = 0, 0.0
        transport.counters.bytes_received += len(packet)
        transport.counters.packets_received += 1
        transport.usage.received(opened.protocol, len(opened.data))
        transport.registry.deliver_datagram(sender, opened.protocol, opened.data)

    def _hold(self, sender: bytes, packet: bytes, source: Any) -> None:
        """Keep a packet of an unknown sender (``sender``: the tag it claims) while a
        connection proves who it is."""
        transport = self.transport
        now = trio.current_time()
        failed = self._failed.get(sender)
        if (sender == transport.local_id[:SENDER_TAG]
                or (failed is not None and now - failed < FAILED_MEMORY)):
            transport.counters.udp_refused += 1
            return
        held = self._held.get(sender)
        if held is None:
            if (len(self._held) >= HELD_SENDERS or len(self._authenticating) >= AUTHENTICATING
                    or not transport.running):
                transport.counters.udp_refused += 1
                return
            held = self._held[sender] = deque()
            self._authenticating.add(sender)
            transport.spawn(self._authenticate, sender, source)
        if len(held) >= HELD_PER_SENDER:
            transport.counters.udp_refused += 1
            return
        held.append((packet, source))

    async def _authenticate(self, sender: bytes, source: Any) -> None:
        """Connect to the node whose id starts with the tag ``sender`` (from the address
        book, else at the packet's source address) and learn it if it is a member."""
        transport = self.transport
        try:
            known = transport.node_with_prefix(sender)
            if known is not None:
                peer = (await transport.ensure_connection(known, PROOF_CAUSE)).peer
            else:
                transport.usage.dialled(PROOF_CAUSE)
                peer = await transport.dial(format_address(*source[:2]))
            if peer.node_id[:SENDER_TAG] != sender:
                raise AuthError("the sender's address answered as another node")
            if not self.core.knows(peer.node_id):  # an older connection: check it again
                transport.authenticator.check_peer(peer, we_dialed=True)
                self.learn(peer)
        except MeshError as exc:
            logger.debug("datagrams from %s dropped: it did not prove itself (%s)",
                         short_id(sender), exc)
            if len(self._failed) > 4 * HELD_SENDERS:
                self._failed.clear()
            self._failed[sender] = trio.current_time()
        except Exception:  # a bug must cost these datagrams, never the transport
            logger.exception("proving the sender %s failed", short_id(sender))
        finally:
            self._authenticating.discard(sender)
            held = self._held.pop(sender, None)  # learn() consumed them if it was proven
            if held:
                transport.counters.udp_refused += len(held)


def _sockaddr(address: str) -> Any:
    """``host:port`` with a literal IP as a socket address; None for anything else."""
    try:
        host, port = parse_address(address)
        ip = ipaddress.ip_address(host)
    except (MeshError, ValueError):
        return None
    if ip.is_unspecified:
        return None
    return (str(ip), port) if ip.version == 4 else (str(ip), port, 0, 0)
