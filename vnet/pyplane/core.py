"""The Python plane's sans-IO core: every peer's sessions behind one UDP socket.

The driver hands it IP packets read from the TUN device (:meth:`PlaneCore.outbound`),
UDP payloads with their source (:meth:`PlaneCore.inbound`) and a tick about once a second
(:meth:`PlaneCore.tick`); it answers with UDP payloads to send and IP packets to write.
``now`` is Unix time in seconds, given by the driver. Randomness (handshake indexes and
ephemeral keys) comes from the injected ``random_bytes``.

Routing is by the peers' allowed IPs, both ways: a packet leaves for the peer whose allowed
IPs hold its destination, and a decrypted packet is accepted only if its source address is
one of the sending peer's allowed IPs. A refused packet raises :class:`PacketError` (the
driver counts it by reason and drops it); nothing the network sends makes the core fail
otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from vnet.plane import Endpoint, PeerConfig, PeerStats
from vnet.pyplane.crypto import AuthError, open_, public_key, seal
from vnet.pyplane.handshake import (
    InitiatorState,
    consume_init,
    consume_response,
    create_init,
    create_response,
)
from vnet.pyplane.messages import (
    DATA,
    DATA_HEAD,
    DATA_HEADER,
    INIT,
    PacketError,
    packet_type,
    parse_init,
    parse_response,
)
from vnet.pyplane.session import Keypair, PeerSession, SessionConfig, flatten_allowed

Datagram = tuple[Endpoint, bytes]
MAX_PLAINTEXT = 65507 - DATA_HEADER - 16
"""The largest packet that fits one UDP datagram once encrypted."""
_U32 = struct.Struct("<I")
_IP = struct.Struct("!I")


class PlaneCore:
    def __init__(self, private_key: bytes, random_bytes: Callable[[int], bytes],
                 config: SessionConfig | None = None, ip_offset: int = 0) -> None:
        if len(private_key) != 32:
            raise ValueError("the plane's private key is 32 bytes")
        self.config = config or SessionConfig()
        self._private = private_key
        self.public_key = public_key(private_key)
        self._random = random_bytes
        self.ip_offset = ip_offset
        """Bytes before the IP header in every packet (the driver's 10-byte offload header;
        it travels encrypted with the packet)."""
        self._peers: dict[bytes, PeerSession] = {}
        self._indexes: dict[int, tuple[PeerSession, Keypair | InitiatorState]] = {}
        self._routes: dict[int, PeerSession] = {}  # /32 routes
        self._wide: list[tuple[int, int, PeerSession]] = []  # (prefix, network, peer)
        self._last_timestamp = 0
        self.dropped: dict[str, int] = {}

    # --- configuration -------------------------------------------------------------------

    def set_peers(self, peers: Iterable[PeerConfig]) -> None:
        """Match the peer list: keep the sessions of peers that stay, drop the others."""
        wanted = {p.public_key: p for p in peers}
        for key in list(self._peers):
            if key not in wanted:
                self._forget(self._peers.pop(key))
        for key, conf in wanted.items():
            if len(key) != 32:
                raise ValueError("a peer's public key is 32 bytes")
            session = self._peers.get(key)
            if session is None:
                session = self._peers[key] = PeerSession(key, conf.endpoint,
                                                         flatten_allowed(conf))
            elif conf.endpoint != session.config_endpoint and conf.endpoint is not None:
                session.endpoint = conf.endpoint
            session.config_endpoint = conf.endpoint
            session.allowed_ips = flatten_allowed(conf)
            session.node_id = conf.node_id
        self._routes.clear()
        wide: list[tuple[int, int, PeerSession]] = []
        for conf in wanted.values():
            session = self._peers[conf.public_key]
            for net in conf.allowed_ips:
                if net.prefixlen == 32:
                    self._routes[int(net.network_address)] = session
                else:
                    wide.append((net.prefixlen, int(net.network_address), session))
        self._wide = sorted(wide, key=lambda item: -item[0])

    def _forget(self, session: PeerSession) -> None:
        for index, (owner, _) in list(self._indexes.items()):
            if owner is session:
                del self._indexes[index]

    def peer(self, key: bytes) -> PeerSession | None:
        return self._peers.get(key)

    def stats(self) -> list[PeerStats]:
        return [PeerStats(s.public_key, s.endpoint, s.rx_bytes, s.tx_bytes, s.last_handshake)
                for s in self._peers.values()]

    # --- packets from the TUN device -----------------------------------------------------

    def route(self, packet: bytes) -> PeerSession:
        off = self.ip_offset
        if len(packet) < off + 20 or packet[off] >> 4 != 4:
            raise PacketError("no_route", "not an IPv4 packet")
        (dst,) = _IP.unpack_from(packet, off + 16)
        session = self._routes.get(dst)
        if session is None:
            for prefix, network, candidate in self._wide:
                if dst >> (32 - prefix) << (32 - prefix) == network:
                    return candidate
            raise PacketError("no_route", f"no peer for {dst >> 24}.{dst >> 16 & 255}."
                                          f"{dst >> 8 & 255}.{dst & 255}")
        return session

    def outbound(self, packet: bytes, now: float) -> list[Datagram]:
        """Encrypt an IP packet for the peer its destination belongs to."""
        if len(packet) > MAX_PLAINTEXT:
            raise PacketError("too_big", f"{len(packet)} bytes")
        return self.send(self.route(packet), packet, now)

    def send(self, session: PeerSession, packet: bytes, now: float) -> list[Datagram]:
        kp = session.current
        config = self.config
        if (kp is None or now - kp.created >= config.reject_after_time
                or kp.send_counter >= config.reject_after_messages):
            session.queue.append(packet)
            while len(session.queue) > config.queue_limit:
                session.queue.popleft()
            return self._maybe_init(session, now)
        out = [self._encrypt(session, kp, packet, now)] if session.endpoint else []
        if (kp.send_counter >= config.rekey_after_messages
                or now - kp.created >= config.rekey_after_time):
            out += self._maybe_init(session, now)
        return out

    def _encrypt(self, session: PeerSession, kp: Keypair, packet: bytes, now: float
                 ) -> Datagram:
        session.owes_keepalive_since = None
        if packet and session.unanswered_since is None:
            session.unanswered_since = now
        counter = kp.send_counter
        kp.send_counter = counter + 1
        data = DATA_HEAD.pack(DATA, kp.remote_index, counter) + seal(kp.send_key, counter,
                                                                       packet)
        session.tx_bytes += len(data)
        assert session.endpoint is not None
        return session.endpoint, data

    # --- handshakes ----------------------------------------------------------------------

    def _new_index(self, session: PeerSession, what: Keypair | InitiatorState | None) -> int:
        while True:
            index: int = _U32.unpack(self._random(4))[0]
            if index not in self._indexes:
                if what is not None:
                    self._indexes[index] = (session, what)
                return index

    def _drop(self, kp: Keypair | InitiatorState | None) -> None:
        if isinstance(kp, Keypair):
            self._indexes.pop(kp.local_index, None)
        elif kp is not None:
            self._indexes.pop(kp.sender, None)

    def _maybe_init(self, session: PeerSession, now: float) -> list[Datagram]:
        """An INIT unless one is in flight and not yet timed out (or no endpoint is known)."""
        if session.pending is not None and now - session.pending_since < self.config.rekey_timeout:
            return []
        if session.endpoint is None:
            return []
        if session.pending is None:
            session.first_attempt = now
        self._drop(session.pending)
        index = self._new_index(session, None)
        self._last_timestamp = max(self._last_timestamp + 1, int(now * 1e9))
        msg, state = create_init(self._private, session.public_key, index,
                                 self._random(32), self._last_timestamp)
        self._indexes[index] = (session, state)
        session.pending = state
        session.pending_since = now
        return [(session.endpoint, msg.encode())]

    def _on_init(self, data: bytes, source: Endpoint, now: float) -> list[Datagram]:
        received = consume_init(self._private, self.public_key, parse_init(data))
        session = self._peers.get(received.peer_static)
        if session is None:
            raise PacketError("unknown_peer", "handshake from a key that is not a peer")
        if received.timestamp <= session.last_timestamp:
            raise PacketError("timestamp", "replayed or stale handshake init")
        index = self._new_index(session, None)
        msg, keys = create_response(received, index, self._random(32))
        session.last_timestamp = received.timestamp
        kp = Keypair(keys, index, received.sender, now, False, self.config.replay_window)
        self._drop(session.next)
        session.next = kp
        self._indexes[index] = (session, kp)
        session.endpoint = source
        session.last_handshake = now
        session.rx_bytes += len(data)
        return [(source, msg.encode())]

    def _on_response(self, data: bytes, source: Endpoint, now: float) -> list[Datagram]:
        msg = parse_response(data)
        entry = self._indexes.get(msg.receiver)
        if entry is None or not isinstance(entry[1], InitiatorState):
            raise PacketError("index", "response to no handshake of ours")
        session, state = entry
        if session.pending is not state:
            raise PacketError("index", "response to a superseded handshake")
        keys = consume_response(state, self._private, msg)
        del self._indexes[msg.receiver]
        session.pending = None
        kp = Keypair(keys, state.sender, msg.sender, now, True, self.config.replay_window)
        self._indexes[kp.local_index] = (session, kp)
        self._rotate(session, kp, now)
        session.endpoint = source
        session.last_handshake = now
        session.rx_bytes += len(data)
        out = self._flush(session, now)
        if not out:  # a keepalive confirms the keypair to the responder
            out.append(self._encrypt(session, kp, b"", now))
        return out

    def _rotate(self, session: PeerSession, kp: Keypair, now: float) -> None:
        self._drop(session.previous)
        session.previous = session.current
        session.previous_until = now + self.config.previous_ttl
        session.current = kp

    def _flush(self, session: PeerSession, now: float) -> list[Datagram]:
        kp = session.current
        out: list[Datagram] = []
        if kp is None or session.endpoint is None:
            return out
        while session.queue:
            out.append(self._encrypt(session, kp, session.queue.popleft(), now))
        return out

    # --- packets from the network --------------------------------------------------------

    def inbound(self, data: bytes, source: Endpoint, now: float
                ) -> tuple[bytes | None, list[Datagram]]:
        """(the IP packet to write, or None; UDP payloads to send) for one UDP payload."""
        kind = packet_type(data)
        if kind != DATA:
            if kind == INIT:
                return None, self._on_init(data, source, now)
            return None, self._on_response(data, source, now)
        _, index, counter = DATA_HEAD.unpack_from(data)
        entry = self._indexes.get(index)
        if entry is None:
            raise PacketError("index", "no session with this index")
        session, kp = entry
        if not isinstance(kp, Keypair):
            raise PacketError("index", "data to a handshake index")
        if now - kp.created >= self.config.reject_after_time:
            raise PacketError("expired", "the session's key has expired")
        if not kp.window.check(counter) or counter >= self.config.reject_after_messages:
            raise PacketError("replay", f"counter {counter}")
        try:
            plain = open_(kp.receive_key, counter, data[DATA_HEADER:])
        except AuthError as exc:
            raise PacketError("auth", str(exc)) from exc
        kp.window.mark(counter)
        kp.received = True
        session.endpoint = source
        session.rx_bytes += len(data)
        out: list[Datagram] = []
        if kp is session.next:
            session.next = None
            self._rotate(session, kp, now)
            out = self._flush(session, now)
        session.unanswered_since = None
        if not plain:
            return None, out
        if session.owes_keepalive_since is None:
            session.owes_keepalive_since = now
        off = self.ip_offset
        if len(plain) < off + 20 or plain[off] >> 4 != 4:
            raise PacketError("source", "not an IPv4 packet")
        (src,) = _IP.unpack_from(plain, off + 12)
        if not session.allows(src):
            raise PacketError("source", "source address not allowed for this peer")
        return plain, out

    # --- timers --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Datagram]:
        """Expire old keys; resend unanswered handshakes for peers with queued packets;
        send a keepalive to a peer whose packets we have not answered for
        ``keepalive_timeout``; handshake again with a peer that has not answered ours for
        ``keepalive_timeout + rekey_timeout`` (it may have lost its keys: restarted)."""
        config = self.config
        out: list[Datagram] = []
        for session in self._peers.values():
            if (session.previous is not None and now >= session.previous_until
                    and session.current is not None and session.current.received):
                self._drop(session.previous)
                session.previous = None
            for name in ("current", "next", "previous"):
                kp = getattr(session, name)
                if kp is not None and now - kp.created >= config.reject_after_time:
                    self._drop(kp)
                    setattr(session, name, None)
            kp = session.current
            if kp is not None and session.endpoint is not None:
                owes = session.owes_keepalive_since
                if owes is not None and now - owes >= config.keepalive_timeout:
                    out.append(self._encrypt(session, kp, b"", now))
                silent = session.unanswered_since
                if (silent is not None and session.pending is None
                        and now - silent >= config.keepalive_timeout + config.rekey_timeout):
                    session.unanswered_since = None
                    out += self._maybe_init(session, now)
            if session.pending is None:
                if session.queue and session.current is None:
                    out += self._maybe_init(session, now)
                continue
            if now - session.first_attempt >= config.rekey_attempt_time:
                self._drop(session.pending)
                session.pending = None
                session.queue.clear()
            elif now - session.pending_since >= config.rekey_timeout:
                out += self._maybe_init(session, now)
        return out
