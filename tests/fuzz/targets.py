"""The fuzz targets: every decoder that takes bytes from outside, with its seeds and checks.

A target's ``run`` feeds one input to the decoder the way its driver does, lets the
decoder's typed error through (the engine counts it as a clean refusal) and raises
:class:`~tests.fuzz.engine.FuzzFailure` when an invariant breaks: a refused input changed
state, a stateful core did not stay broken after an error, forged data was accepted, or
something decoded that cannot be encoded back. Any other exception is a crash.

Seeds are valid encodings made by the real encoders (real keys and certificates, traffic
captured from simulated gossip and DHT meshes, requests signed by botocore), so mutants
reach deep into each decoder instead of failing at the first byte.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import json
import math
import random
import types
import typing
from typing import Any

from tests.fuzz.engine import CBOR_TOKENS, FuzzFailure, Target

# --- helpers ------------------------------------------------------------------------------


def _import_message_modules() -> None:
    """Register every wire message class (the generic decoder knows only imported ones)."""
    import meshcloud.agent.diagnostics
    import meshcloud.datadir
    import meshcloud.identity.certs
    import meshcloud.join
    import meshcloud.state.messages
    import meshcloud.state.tables
    import meshcloud.transport.handshake  # noqa: F401


def _sample(hint: Any, rng: random.Random, depth: int = 0) -> Any:
    """A plausible value for a message field's type hint (for seeds of every tag)."""
    from meshcloud.codec.messages import is_message  # noqa: F401

    if hint is Any or hint is object:
        return rng.choice([0, "x", b"x", None])
    if hint is type(None) or hint is None:
        return None
    if hint is bool:
        return rng.random() < 0.5
    if hint is int:
        return rng.choice([0, 1, 7, 1000, 2**40])
    if hint is float:
        return rng.choice([0.0, 1.5, 1e9])
    if hint is str:
        return rng.choice(["", "a", "node-1", "/meshcloud/x/1", "bucket/key"])
    if hint is bytes:
        return rng.choice([b"", b"\x01" * 32, b"\x02" * 16, b"\x03" * 64])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return rng.choice(list(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _instance(hint, rng, depth + 1)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)] or list(args)
        return _sample(rng.choice(options), rng, depth)
    if depth > 4:
        empty = {list: [], tuple: (), frozenset: frozenset(), dict: {}}
        return empty.get(origin)
    if origin is list:
        return [_sample(args[0], rng, depth + 1) for _ in range(rng.randrange(3))]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_sample(args[0], rng, depth + 1) for _ in range(rng.randrange(3)))
        return tuple(_sample(a, rng, depth + 1) for a in args)
    if origin is frozenset:
        return frozenset(_sample(args[0], rng, depth + 1) for _ in range(rng.randrange(3)))
    if origin is dict:
        return {_sample(args[0], rng, depth + 1): _sample(args[1], rng, depth + 1)
                for _ in range(rng.randrange(3))}
    raise TypeError(f"no sample for {hint!r}")


def _instance(cls: type, rng: random.Random, depth: int = 0) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _sample(hints[f.name], rng, depth) for f in dataclasses.fields(cls)}
    return cls(**kwargs)


def synthetic_messages(per_class: int = 3) -> list[bytes]:
    """Encodings of every registered message class, fields filled with plausible values
    (classes whose validation refuses every sample are skipped)."""
    from meshcloud.codec.messages import encode_message, registered_tags

    _import_message_modules()
    rng = random.Random(7)
    out = []
    for _tag, cls in sorted(registered_tags().items()):
        made = 0
        for _ in range(per_class * 8):
            if made >= per_class:
                break
            try:
                out.append(encode_message(_instance(cls, rng)))
            except Exception:
                continue
            made += 1
    return out


def seeded_urandom(seed: int) -> Any:
    """Keys and invite ids drawn while this is active come from ``random.Random(seed)``."""
    from unittest import mock

    return mock.patch("os.urandom", random.Random(seed).randbytes)


@functools.cache
def mesh() -> Any:
    """Three certified members; keys and invite ids come from a seeded generator, so the
    seeds (and a campaign's inputs) are the same on every run."""
    from meshcloud.identity.keys import SigningKey
    from meshcloud.testing import TestMesh

    with seeded_urandom(11):
        m = TestMesh(root=SigningKey.generate())
        for _ in range(3):
            m.add_member()
        return m


@functools.cache
def identity_messages() -> list[bytes]:
    from meshcloud.codec.messages import encode_message
    from meshcloud.identity.certs import make_join_proof
    from meshcloud.identity.invites import create_invite
    from meshcloud.identity.keys import SigningKey
    from meshcloud.transport.handshake import HandshakePayload, HandshakeVerdict

    m = mesh()
    with seeded_urandom(12):
        token = create_invite(m.root, now=m.now_ms, ttl_ms=3_600_000, uses=2,
                              bootstrap=("tcp://10.0.0.1:7946", "tcp://[::1]:7946"),
                              mesh_name="home", ledger=(m.members[0].id,))
    proof = make_join_proof(token, SigningKey(b"\x05" * 32), now=m.now_ms)
    out = [encode_message(x) for x in (
        token, token.invite, token.invite.body, proof, proof.binding,
        m.members[0].cert, m.members[1].cert, m.members[2].cert,
        HandshakePayload(node_public=m.members[1].key.public, cert=m.members[1].cert,
                         listen_addresses=("127.0.0.1:7000",), agent_version="mc/1"),
        HandshakePayload(node_public=b"\x05" * 32, join_proof=proof),
        HandshakeVerdict(accepted=True), HandshakeVerdict(accepted=False, reason="revoked"),
    )]
    return out


@functools.cache
def gossip_traffic() -> tuple[list[bytes], list[bytes]]:
    """(datagrams, push-pull syncs) captured from a 5-node simulated gossip mesh."""
    from gossip.outputs import Send, Sync
    from meshcloud.codec.messages import encode_message
    from sim.swimmesh import SwimCluster

    cluster = SwimCluster(seed=3)
    datagrams: dict[bytes, None] = {}
    syncs: dict[bytes, None] = {}

    def capture(now: float, node: bytes, out: object) -> None:
        if type(out) is Send and len(datagrams) < 400:
            datagrams[encode_message(out.msg)] = None
        elif type(out) is Sync and len(syncs) < 40:
            syncs[encode_message(out.msg)] = None

    cluster.listeners.append(capture)
    first = cluster.add()
    for _ in range(4):
        cluster.add(seeds=[first])
    cluster.run_for(6.0)
    victim = list(cluster.nodes)[-1]
    cluster.crash(victim)
    cluster.run_for(8.0)
    cluster.leave(list(cluster.nodes)[1])
    cluster.run_for(3.0)
    return list(datagrams), list(syncs)


@functools.cache
def dht_traffic() -> list[bytes]:
    from dht.outputs import Send
    from meshcloud.codec.messages import encode_message
    from sim.dhtmesh import SimNetwork

    net = SimNetwork(12, seed=5, wire=True)
    net.log = []
    net.build_by_joining()
    for i in (0, 3, 7):
        net.feed(i, net.cores[i].publish_self([f"tcp://10.0.0.{i}:7000"], net.now))
        net.feed(i, net.cores[i].provide(b"\x42" * 32, net.now))
    net.run(lambda: all(not c.active_lookups for c in net.cores))
    net.feed(5, net.cores[5].find_providers(b"\x42" * 32, net.now))
    net.feed(6, net.cores[6].find_peer(net.ids[3], net.now))
    net.run(lambda: all(not c.active_lookups for c in net.cores))
    seen: dict[bytes, None] = {}
    for _i, out in net.log:
        if type(out) is Send:
            seen[encode_message(out.msg)] = None
    return list(seen)[:600]


@functools.cache
def message_corpus() -> list[bytes]:
    datagrams, syncs = gossip_traffic()
    return identity_messages() + datagrams[:150] + syncs[:10] + dht_traffic()[:200] \
        + synthetic_messages()


# --- codec --------------------------------------------------------------------------------


def cbor_target() -> Target:
    from meshcloud.codec import cbor
    from meshcloud.errors import CodecError

    plain = [
        0, 1, -1, 23, 24, 255, 256, 2**32, 2**64 - 1, -(2**64), 2**200, 1.5, -0.0, float("inf"),
        float("nan"), "", "é€𝄞", b"", b"\x00" * 40, None, True, False, [], {},
        [1, [2, [3, [4, [5]]]]], {"a": 1, 2: b"b", b"c": [None, 1.0]},
        {"nested": {"deeper": {"list": [{"x": i} for i in range(5)]}}},
    ]
    seeds = [cbor.encode(v) for v in plain] + message_corpus()[:100]

    def run(data: bytes) -> None:
        value = cbor.decode(data)
        cbor.encode(value)  # whatever decodes must encode back

    return Target("cbor", seeds, run, (CodecError,), CBOR_TOKENS, weight=1.0, cbor=True)


def messages_target() -> Target:
    from meshcloud.codec.messages import decode_message, encode_message
    from meshcloud.errors import CodecError

    def run(data: bytes) -> None:
        msg = decode_message(data)
        again = encode_message(msg)
        if encode_message(decode_message(again)) != again:
            raise FuzzFailure(f"{type(msg).__name__} does not round-trip after decoding")

    return Target("messages", message_corpus(), run, (CodecError,), CBOR_TOKENS, weight=2.0,
                  cbor=True)


def frames_target() -> Target:
    from meshcloud.codec.frames import FrameDecoder, encode_frame
    from meshcloud.errors import CodecError

    corpus = message_corpus()
    seeds = [b"".join(encode_frame(m) for m in corpus[i:i + 3]) for i in range(0, 60, 3)]
    seeds.append(encode_frame(b""))
    limit = 4096

    def run(data: bytes) -> None:
        decoder = FrameDecoder(max_frame=limit)
        cuts = sorted(random.Random(len(data)).sample(range(len(data) + 1),
                                                      min(3, len(data) + 1)))
        frames: list[bytes] = []
        pos = 0
        try:
            for cut in [*cuts, len(data)]:
                frames += decoder.feed(data[pos:cut])
                pos = cut
        except CodecError:
            try:
                decoder.feed(b"\x00")
            except CodecError:
                raise
            raise FuzzFailure("a frame decoder accepted input after an error") from None
        if any(len(f) > limit for f in frames):
            raise FuzzFailure("a frame above the limit was returned")
        if sum(len(f) + 4 for f in frames) + decoder.buffered != len(data):
            raise FuzzFailure("frames and buffered bytes do not add up to the input")

    tokens = (b"\x00\x00\x10\x01", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", *CBOR_TOKENS[:6])
    return Target("frames", seeds, run, (CodecError,), tokens, weight=0.5)


# --- identity -----------------------------------------------------------------------------


def certs_target() -> Target:
    """Certificates through the generic decoder (their shape may change), then verified."""
    from meshcloud.codec.messages import decode_message
    from meshcloud.errors import AuthError, CodecError
    from meshcloud.identity.certs import MemberProof, MeshCert

    m = mesh()
    genuine = {member.key.public for member in m.members}
    seeds = identity_messages()

    def run(data: bytes) -> None:
        msg = decode_message(data)
        if type(msg) is MeshCert:
            msg.verify(m.root.public)
            if msg.node_public not in genuine:
                raise FuzzFailure("a certificate for a key the mesh never admitted verified")
        elif type(msg) is MemberProof:
            msg.check(m.root.public)

    return Target("certs", seeds, run, (CodecError, AuthError), CBOR_TOKENS, weight=0.5, cbor=True)


def invite_text_target() -> Target:
    from meshcloud.errors import InviteError
    from meshcloud.identity.invites import InviteToken, create_invite

    m = mesh()
    with seeded_urandom(13):
        tokens = [create_invite(m.root, now=m.now_ms, ttl_ms=60_000, uses=u,
                                bootstrap=tuple(f"tcp://10.0.0.{i}:7946" for i in range(u)),
                                mesh_name="home" * u, ledger=(m.members[0].id,))
                  for u in (1, 3)]
    seeds = [t.encode().encode() for t in tokens]
    seeds += [b"  " + s + b"\n" for s in seeds]

    def run(data: bytes) -> None:
        token = InviteToken.decode(data.decode("latin-1"))
        if token.invite.body.root_public != m.root.public:
            raise FuzzFailure("an invite of another root was accepted")

    extra = (b"mc1-", b"=", b"-", b"_", b"+", b"/", b"\n", b" ", b"\x00", b"A" * 5000)
    return Target("invite_text", seeds, run, (InviteError,), extra, weight=0.5)


def invite_cbor_target() -> Target:
    """Structure-aware: mutate the token's CBOR, then wrap it as a token again."""
    from meshcloud.codec.messages import encode_message
    from meshcloud.errors import InviteError
    from meshcloud.identity.invites import TOKEN_PREFIX, InviteToken, create_invite

    m = mesh()
    with seeded_urandom(14):
        token = create_invite(m.root, now=m.now_ms, ttl_ms=60_000, uses=2,
                              bootstrap=("tcp://10.0.0.1:7946",), mesh_name="home",
                              ledger=(m.members[0].id,))
    seeds = [encode_message(token)]

    def run(data: bytes) -> None:
        text = TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")
        decoded = InviteToken.decode(text)
        if decoded.invite != token.invite:
            raise FuzzFailure("a changed invite passed its signature check")

    return Target("invite_cbor", seeds, run, (InviteError,), CBOR_TOKENS, weight=0.5, cbor=True)


# --- transport ----------------------------------------------------------------------------


@functools.cache
def handshake_setup() -> dict[str, Any]:
    """A real two-member handshake with fixed ephemeral keys, so it replays exactly."""
    from meshcloud.transport.handshake import HandshakeCore, HandshakeStatus

    m = mesh()
    a, b = m.members[0], m.members[1]

    def dialer() -> HandshakeCore:
        return HandshakeCore(initiator=True, key=a.key, authenticator=a.authenticator,
                             listen_addresses=("127.0.0.1:1",), expect=b.id,
                             ephemeral_private=b"\x11" * 32)

    def listener() -> HandshakeCore:
        return HandshakeCore(initiator=False, key=b.key, authenticator=b.authenticator,
                             listen_addresses=("127.0.0.1:2",), ephemeral_private=b"\x22" * 32)

    d, lis = dialer(), listener()
    m1 = d.data_to_send()
    lis.receive_data(m1)
    m2 = lis.data_to_send()
    d.receive_data(m2)
    m3 = d.data_to_send()
    lis.receive_data(m3)
    verdict = lis.data_to_send()
    d.receive_data(verdict)
    assert d.status is HandshakeStatus.DONE and lis.status is HandshakeStatus.DONE
    return {"dialer": dialer, "listener": listener, "wire": (m1, m2, m3, verdict),
            "a": a, "b": b, "channels": (d.channel, lis.channel)}


def handshake_target() -> Target:
    """Each of the four handshake messages, mutated, fed to the side that reads it."""
    from meshcloud.errors import AuthError, RemoteProtocolError
    from meshcloud.transport.handshake import HandshakeStatus

    setup = handshake_setup()
    m1, m2, m3, verdict = setup["wire"]
    seeds = [bytes([i]) + w for i, w in enumerate((m1, m2, m3, verdict))]
    expected = (RemoteProtocolError, AuthError)

    def run(data: bytes) -> None:
        if not data:
            return
        stage, body = data[0] % 4, data[1:]
        if stage in (0, 2):
            core, peer_id = setup["listener"](), setup["a"].id
            if stage == 2:
                core.receive_data(m1)
                core.data_to_send()
        else:
            core, peer_id = setup["dialer"](), setup["b"].id
            core.data_to_send()
            if stage == 3:
                core.receive_data(m2)
                core.data_to_send()
        try:
            core.receive_data(body)
        except expected:
            if core.status is not HandshakeStatus.FAILED or core.peer is not None:
                raise FuzzFailure("a failed handshake kept a peer or left FAILED") from None
            try:
                core.receive_data(b"\x00\x01")
            except expected:
                raise
            raise FuzzFailure("a failed handshake accepted more input") from None
        if core.status is HandshakeStatus.DONE and (core.peer is None
                                                    or core.peer.node_id != peer_id):
            raise FuzzFailure("a mutated handshake admitted another identity")
        if core.status is HandshakeStatus.FAILED:
            raise FuzzFailure("handshake FAILED without raising")

    return Target("handshake", seeds, run, expected, (b"\x00\x20", b"\xff\xff", b"\x00\x00"),
                  weight=0.15)


def handshake_payload_target() -> Target:
    """What the handshake does with a decrypted payload: decode, limits, key binding, admission."""
    from meshcloud.codec.messages import decode_message, encode_message
    from meshcloud.errors import AuthError, RemoteProtocolError
    from meshcloud.identity.keys import key_id
    from meshcloud.transport.handshake import MAX_PAYLOAD, HandshakePayload, static_key_of
    from meshcloud.transport.peers import PeerAuth

    m = mesh()
    a, b = m.members[0], m.members[1]
    proven = static_key_of(b.key.public)  # the static key the peer proved in the handshake
    seeds = [encode_message(HandshakePayload(node_public=b.key.public, cert=b.cert,
                                             listen_addresses=addresses, agent_version=version))
             for addresses, version in ((("127.0.0.1:7000", "[::1]:7"), "meshcloud/0.1"),
                                        ((), ""), (("tcp://10.1.2.3:7946",) * 16, "v" * 64))]
    seeds += identity_messages()[8:10]  # the same payload, and a joiner's (refused here)

    def run(data: bytes) -> None:
        payload = decode_message(data, HandshakePayload, max_size=MAX_PAYLOAD)
        payload.check_limits()
        if static_key_of(payload.node_public) != proven:
            raise AuthError("key mismatch")
        peer = PeerAuth(node_id=key_id(payload.node_public), node_public=payload.node_public,
                        cert=payload.cert, join_proof=payload.join_proof,
                        listen_addresses=payload.listen_addresses,
                        agent_version=payload.agent_version)
        a.authenticator.check_peer(peer, we_dialed=True)
        if peer.node_id != b.id or peer.cert is None or peer.cert.node_public != b.key.public:
            raise FuzzFailure("a payload with another identity was admitted")

    return Target("handshake_payload", seeds, run, (RemoteProtocolError, AuthError),
                  CBOR_TOKENS, weight=0.5, cbor=True)


def channel_target() -> Target:
    """Encrypted transport messages: a forged or damaged message is never decrypted."""
    from meshcloud.transport.channel import SecureChannel
    from meshcloud.transport.noise import CipherState, NoiseError, TransportCiphers

    sender = handshake_setup()["channels"][0]
    send_key = recv_key = sender._send.k  # what one side sends with, the other reads with
    plaintexts = [b"", b"hello", bytes(range(256)) * 4, b"x" * 3000]
    writer = SecureChannel(TransportCiphers(send=CipherState(send_key), receive=CipherState(None),
                                            handshake_hash=b"", remote_static=b""))
    wire = b"".join(bytes(writer.encrypt(p)) for p in plaintexts)
    seeds = [wire, wire[: len(wire) // 2]]

    def run(data: bytes) -> None:
        channel = SecureChannel(TransportCiphers(send=CipherState(None),
                                                 receive=CipherState(recv_key),
                                                 handshake_hash=b"", remote_static=b""))
        got: list[bytes] = []
        cut = len(data) // 3
        try:
            for piece in (data[:cut], data[cut:]):
                got += [bytes(p) for p in channel.decrypt(piece)]
        except NoiseError:
            _prefix_check(got, plaintexts)
            try:
                channel.decrypt(b"\x00\x10" + b"\x00" * 16)
            except NoiseError:
                raise
            raise FuzzFailure("a broken channel decrypted again") from None
        _prefix_check(got, plaintexts)

    return Target("channel", seeds, run, (NoiseError,), (b"\x00\x10", b"\xff\xff"), weight=0.5)


def _prefix_check(got: list[bytes], sent: list[bytes]) -> None:
    if got != sent[: len(got)]:
        raise FuzzFailure("the channel returned a plaintext that was never sent")


def mux_target() -> Target:
    from meshcloud.transport.mux import MuxCore, MuxError, MuxState

    sender = MuxCore(initiator=True, now=0.0)
    s1 = sender.open_stream("/meshcloud/dht/1")
    sender.send_message(s1, b"request-bytes")
    sender.end_stream(s1)
    s2 = sender.open_stream("/meshcloud/gossip-sync/1")
    sender.send_message(s2, b"x" * 70_000)
    sender.send_message(s2, b"")
    sender.send_datagram("/meshcloud/gossip/1", b"datagram")
    s3 = sender.open_stream("/p/3")
    sender.announce(s3)
    sender.reset_stream(s3, "gone")
    packets_a = b"".join(bytes(p) for p in sender.data_to_send())
    sender.activate(0.0)  # the keepalive runs while streams are open
    sender.on_timer(5.0)  # keepalive PING
    sender.go_away("bye")
    packets_b = b"".join(bytes(p) for p in sender.data_to_send())
    seeds = [packets_a[:2000], packets_a[-3000:], packets_b, packets_a[:200] + packets_b]

    def run(data: bytes) -> None:
        core = MuxCore(initiator=False, now=0.0)
        cut = len(data) // 2
        try:
            events = core.receive_data(data[:cut], 0.5)
            events += core.receive_data(data[cut:], 0.6)
        except MuxError:
            if core.state is not MuxState.ERROR:
                raise FuzzFailure("the mux raised but did not enter ERROR") from None
            try:
                core.receive_data(b"\x05\x00\x00\x08\x00\x00\x00\x00" + b"\x00" * 8, 0.7)
            except MuxError:
                raise
            raise FuzzFailure("a mux in ERROR accepted more input") from None
        core.data_to_send()
        core.on_timer(0.7)
        if sum(len(getattr(e, "data", b"")) for e in events) > len(data):
            raise FuzzFailure("the mux delivered more bytes than it received")

    tokens = (b"\x00\x04", b"\x01\x07", b"\x02\x00\x00\x04", b"\x03", b"\x05\x00\x00\x08",
              b"\xff\xff\xff\xff", b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
    return Target("mux", seeds, run, (MuxError,), tokens, weight=1.0)


# --- gossip and DHT -----------------------------------------------------------------------


class _KnownOnly:
    def __init__(self, ids: set[bytes]) -> None:
        self.ids = ids

    def is_member(self, node_id: bytes, proof: bytes | None) -> bool:
        return node_id in self.ids


def gossip_target() -> Target:
    from gossip.config import GossipConfig
    from gossip.core import SwimCore
    from gossip.hooks import fake_hooks
    from gossip.messages import PACKET_TYPES, Alive, PushPull, SyncDelta, SyncDigest
    from gossip.outputs import Send, Sync
    from meshcloud.codec.messages import decode_message, encode_message
    from meshcloud.errors import CodecError
    from sim.swimmesh import sim_node_id

    datagrams, syncs = gossip_traffic()
    config = GossipConfig()
    ids = {sim_node_id(i) for i in range(5)}
    me, member, outsider = sim_node_id(4), sim_node_id(0), b"\x99" * 32
    alives = []
    for data in datagrams:
        msg = decode_message(data, PACKET_TYPES)
        parts = getattr(msg, "parts", (msg,))
        alives += [p for p in parts if type(p) is Alive and p.node != me]
    core = SwimCore(me, config, fake_hooks(me, _KnownOnly(ids)), random.Random(1), now=0.0,
                    addresses=("sim://4",))
    core.preload(alives, 0.0, verified=True)
    clock = [1.0]

    def snapshot() -> tuple[Any, ...]:
        return tuple((m.node_id, m.state, m.incarnation, m.addresses) for m in core.members())

    def check_outputs(outputs: list[Any]) -> None:
        for out in outputs:
            if type(out) in (Send, Sync):
                encode_message(out.msg)

    def run(data: bytes) -> None:
        msg = decode_message(data, (*PACKET_TYPES, PushPull, SyncDigest, SyncDelta),
                             max_size=config.max_sync_bytes)
        clock[0] += 0.01
        now = clock[0]
        before = snapshot()
        if type(msg) is SyncDigest:
            delta = core.on_sync_digest(outsider, msg, now)
            if delta.entries or delta.wants or delta.wants_new or snapshot() != before:
                raise FuzzFailure("a digest from a non-member got an answer")
            encode_message(core.on_sync_digest(member, msg, now))
            outputs = []
        elif type(msg) is SyncDelta:
            entries = PushPull(join=False, entries=msg.entries)
            if core.on_sync_entries(outsider, entries, now) or snapshot() != before:
                raise FuzzFailure("sync entries from a non-member changed the member table")
            wanted, outputs = core.on_sync_delta(member, msg, now)
            encode_message(wanted)
        elif type(msg) is PushPull:
            reply, outputs = core.on_push_pull(outsider, msg, now)
            if outputs or reply.entries or snapshot() != before:
                raise FuzzFailure("a push-pull from a non-member changed the member table")
            reply, outputs = core.on_push_pull(member, msg, now)
            encode_message(reply)
        else:
            if core.on_message(outsider, msg, now) or snapshot() != before:
                raise FuzzFailure("a datagram from a non-member changed the member table")
            outputs = core.on_message(member, msg, now)
        check_outputs(outputs)
        if core.next_deadline() is not None and core.next_deadline() <= now:
            check_outputs(core.on_timer(now))

    digest = core.sync_digest()
    seeds = [encode_message(digest),
             encode_message(core.on_sync_digest(member, SyncDigest(entries=digest.entries[1:]),
                                                0.5))]
    return Target("gossip", datagrams + syncs + seeds, run, (CodecError,), CBOR_TOKENS, weight=1.0,
                  cbor=True)


def dht_target() -> Target:
    from dht.messages import REPLY_TYPES, REQUEST_TYPES
    from dht.outputs import Send
    from meshcloud.codec.messages import decode_message, encode_message
    from meshcloud.errors import CodecError
    from sim.dhtmesh import SimNetwork

    seeds = dht_traffic()
    net = SimNetwork(6, seed=9)
    net.build_uniform()
    core = net.cores[0]
    peers = net.ids[1:]
    clock = [1.0]

    def run(data: bytes) -> None:
        msg = decode_message(data, (*REQUEST_TYPES, *REPLY_TYPES))
        clock[0] += 0.01
        peer = peers[len(data) % len(peers)]
        for out in core.on_message(peer, msg, clock[0]):
            if type(out) is Send:
                encode_message(out.msg)
        if core.next_deadline() <= clock[0]:
            core.on_timer(clock[0])

    return Target("dht", seeds, run, (CodecError,), CBOR_TOKENS, weight=1.0, cbor=True)


# --- S3 -----------------------------------------------------------------------------------


def _request_text(req: Any) -> bytes:
    lines = [f"{req.method} {req.raw_path}" + (f"?{req.raw_query}" if req.raw_query else "")]
    lines += [f"{k}: {v}" for k, v in req.headers]
    return "\n".join(lines).encode("latin-1")


def _parse_request(data: bytes) -> Any:
    """A lenient reading of ``METHOD TARGET`` then ``Name: value`` lines (never fails)."""
    from blobstore.s3.request import S3Request

    text = data.decode("latin-1")
    first, *rest = text.split("\n")
    method, _, target = first.partition(" ")
    headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in rest)]
    return S3Request.build(method or "GET", target or "/", headers)


S3_TOKENS = (
    b"\n", b": ", b",", b"=", b"/", b"&", b";", b" ", b"%", b"%2F", b"%ZZ", b"%", b"\x00",
    b"\xff", b"Credential=", b"SignedHeaders=", b"Signature=", b"AWS4-HMAC-SHA256 ",
    b"X-Amz-Expires=", b"X-Amz-Algorithm=AWS4-HMAC-SHA256&", b"X-Amz-Date=", b"x-amz-date: ",
    b"aws4_request", b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD", b"UNSIGNED-PAYLOAD",
    b"STREAMING-UNSIGNED-PAYLOAD-TRAILER", b"99999999999999999999", b"-1",
    b"20260115T123000Z", b"99991231T235959Z", b"Authorization: AWS ", b"\ndate: ",
    b"\xb2", b"%C2%B2", b"%D9%A3", b"%00", b"%2e%2e", b"/../", b"\nHost: ",
)


@functools.cache
def s3_signing() -> Any:
    from tests.blobstore.s3 import signing

    return signing


def sigv4_target() -> Target:
    from blobstore.s3.errors import S3Error
    from blobstore.s3.sigv4 import verify_request

    sg = s3_signing()
    url = "https://s3.example:8333/bucket/some%20key/x.txt"
    requests = [
        sg.header_signed("GET", url + "?list-type=2&prefix=a%2Fb&max-keys=10"),
        sg.header_signed("PUT", url, {"x-amz-meta-colour": "blue  green"}, b"payload"),
        sg.header_signed("PUT", url, {
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "10"}),
        sg.presigned("GET", url, expires=3600),
        sg.presigned("PUT", url + "?partNumber=2&uploadId=abc", expires=60),
    ]
    seeds = [_request_text(r) for r in requests]
    seeds.append(b"\n".join(b"Date: Thu, 15 Jan 2026 12:30:00 GMT" if line.startswith(b"X-Amz-Date")
                            else line for line in seeds[0].split(b"\n")))

    def run(data: bytes) -> None:
        auth = verify_request(_parse_request(data), sg.STORE, sg.NOW)
        if auth is not None and auth.access_key != sg.ACCESS:
            raise FuzzFailure("a request signed by no known key was accepted")

    return Target("sigv4", seeds, run, (S3Error,), S3_TOKENS, weight=0.6)


def s3_request_target() -> Target:
    """The rest of a request's outside text: bucket and key from Host and path, the query
    parameters the handlers read, and the body-describing headers."""
    from blobstore.s3.errors import S3Error
    from blobstore.s3.listing import After, ContinuationTokens, Position, parse_max_keys
    from blobstore.s3.multipart import parse_part_number
    from blobstore.s3.names import parse_target
    from blobstore.s3.payload import PayloadCheck

    tokens_codec = ContinuationTokens(b"k" * 32)
    token = tokens_codec.encode(Position(After.KEY, "photos/2026/a.jpg"), bucket="photos",
                                prefix="photos/", delimiter="/")
    seeds = [
        b"GET /photos?list-type=2&prefix=photos%2F&delimiter=%2F&max-keys=100&"
        b"continuation-token=" + token.encode() + b"\nHost: s3.mesh.local:8333",
        b"PUT /photos/some%20dir/caf%C3%A9.txt?partNumber=3&uploadId=abc\nHost: 127.0.0.1\n"
        b"Content-Length: 1024\nContent-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\n"
        b"x-amz-checksum-crc32: AAAAAA==",
        b"GET /key/with/slashes?max-parts=10&part-number-marker=2\n"
        b"Host: photos.s3.mesh.local",
        b"PUT /\nHost: [::1]:9000\nContent-Length: 0",
    ]

    def run(data: bytes) -> None:
        request = _parse_request(data)
        where = parse_target(request.header("host"), request.raw_path,
                             base_domains=("s3.mesh.local",))
        if where.key is not None and (any(s in (".", "..") for s in where.key.split("/"))
                                      or "\x00" in where.key):
            raise FuzzFailure(f"key {where.key!r} escaped validation")
        query = request.query()
        for name in ("max-keys", "max-parts", "max-uploads"):
            if name in query and not 0 <= parse_max_keys(query[name], name=name) <= 1000:
                raise FuzzFailure(f"{name} out of range")
        if "partNumber" in query:
            parse_part_number(query["partNumber"])
        if "continuation-token" in query:
            tokens_codec.decode(query["continuation-token"], bucket=where.bucket or "",
                                prefix=query.get("prefix", ""), delimiter=query.get("delimiter"))
        if request.method == "PUT":
            PayloadCheck.for_request(request, None)

    return Target("s3_request", seeds, run, (S3Error,), S3_TOKENS, weight=0.6)


def chunked_target() -> Target:
    from blobstore.s3.chunked import ChunkedDecoder
    from blobstore.s3.errors import S3Error
    from blobstore.s3.request import S3Request
    from blobstore.s3.sigv4 import PayloadMode, verify_request
    from tests.blobstore.s3.test_chunked import AWS_HEADERS, AWS_NOW, AWS_STORE

    sg = s3_signing()
    auth = verify_request(S3Request.build("PUT", "/examplebucket/chunkObject.txt", AWS_HEADERS),
                          AWS_STORE, AWS_NOW)
    assert auth is not None
    payload = bytes(range(256)) * 3
    signed = sg.encode_signed_chunks(auth, payload, 300)
    trailers = {"x-amz-checksum-crc32": "AAAAAA=="}
    unsigned = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:500], payload[500:]))
    unsigned_trailer = unsigned + b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    seeds = [b"\x00" + signed, b"\x01" + unsigned_trailer]
    modes = (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_UNSIGNED_TRAILER)

    def run(data: bytes) -> None:
        if not data:
            return
        mode = modes[data[0] % 2]
        decoder = ChunkedDecoder(mode=mode, decoded_length=len(payload),
                                 auth=auth if mode is PayloadMode.STREAMING_SIGNED else None,
                                 trailer_names=frozenset(trailers), max_chunk_size=4096)
        body = data[1:]
        out = bytearray()
        try:
            for i in range(0, len(body), 97):
                out += b"".join(decoder.feed(body[i:i + 97]))
            decoder.finish()
        finally:
            if mode is PayloadMode.STREAMING_SIGNED and not payload.startswith(bytes(out)):
                raise FuzzFailure("the decoder returned bytes of a chunk with a bad signature")

    tokens = (b"\r\n", b";chunk-signature=", b"0;", b"ffffffffffffffff", b"10000", b":",
              b"x-amz-trailer-signature:", b"\r\n\r\n", b"0\r\n\r\n", b"x-amz-checksum-crc32:")
    return Target("aws_chunked", seeds, run, (S3Error,), tokens, weight=0.6)


def s3_xml_target() -> Target:
    from blobstore.s3.errors import S3Error
    from blobstore.s3.xml import parse_complete_multipart, parse_delete

    complete = (b'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUpload '
                b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><PartNumber>1'
                b'</PartNumber><ETag>"a54357aff0632cce46d942af68356b38"</ETag></Part><Part>'
                b'<PartNumber>2</PartNumber><ETag>0c78aef83f66abc1fa1e8477f296d394</ETag>'
                b'</Part></CompleteMultipartUpload>')
    delete = (b'<Delete><Quiet>true</Quiet><Object><Key>a/b.txt</Key></Object><Object>'
              b'<Key>caf\xc3\xa9 &amp; co</Key><VersionId>v1</VersionId></Object></Delete>')
    seeds = [b"\x00" + complete, b"\x01" + delete]

    def run(data: bytes) -> None:
        if not data:
            return
        if data[0] % 2 == 0:
            for number, _etag in parse_complete_multipart(data[1:]):
                if not 1 <= number <= 10_000:
                    raise FuzzFailure("a part number outside 1..10000 was accepted")
        else:
            parse_delete(data[1:])

    tokens = (b"<", b">", b"</", b"/>", b"<!DOCTYPE d [<!ENTITY e 'x'>]>", b"&e;", b"&amp;",
              b"&#0;", b"&#x10FFFF;", b"<![CDATA[", b"]]>", b"<?xml version='1.0' "
              b"encoding='UTF-16'?>", b" xmlns:a='u'", b"a:", b"<Part>", b"<PartNumber>",
              b"<ETag>", b"<Object><Key>", b"\xef\xbb\xbf", b"\x00", b"99999999999",
              "²".encode(), "٣".encode())
    return Target("s3_xml", seeds, run, (S3Error,), tokens, weight=0.6)


def s3_headers_target() -> Target:
    """Range and conditional headers (the first line is the Range header's value)."""
    from blobstore.s3.conditions import Current, check_conditions
    from blobstore.s3.errors import S3Error
    from blobstore.s3.ranges import parse_range
    from blobstore.s3.request import S3Request

    seeds = [
        b"bytes=0-99\nIf-Match: \"abc\"\nIf-Unmodified-Since: Wed, 21 Oct 2026 07:28:00 GMT",
        b"bytes=-500\nIf-None-Match: W/\"abc\", \"def\"\nIf-Modified-Since: Thu, 01 Jan 2026 "
        b"00:00:00 GMT",
        b"bytes=100-\nIf-None-Match: *",
        b"bytes = 5-4\nIf-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT",
    ]
    sizes = (0, 1, 100, 1 << 40)
    current = Current(etag="abc", last_modified=1_767_225_600.5)

    def run(data: bytes) -> None:
        text = data.decode("latin-1")
        first, _, rest = text.partition("\n")
        for size in sizes:
            try:
                r = parse_range(first, size)
            except S3Error:
                continue
            if r is not None and not 0 <= r.start < r.end <= size:
                raise FuzzFailure(f"range {r} outside an object of {size} bytes")
        headers = [(n.strip(), v.strip()) for n, _, v in
                   (line.partition(":") for line in rest.split("\n"))]
        for method in ("GET", "PUT"):
            for cur in (current, None):
                try:
                    check_conditions(S3Request(method, "/b/k", "", tuple(headers)), cur)
                except S3Error:
                    continue

    tokens = (b"bytes=", b"-", b",", b"\n", b"If-Match: ", b"If-None-Match: ",
              b"If-Modified-Since: ", b"If-Unmodified-Since: ", b"GMT", b" +9999", b"-0000",
              b"W/", b"\"", b"*", b"99999999999999999999", b"31 Dec 9999 23:59:59",
              b"01 Jan 0001 00:00:00", b"\xb2")
    return Target("s3_headers", seeds, run, (S3Error,), tokens, weight=0.6)


# --- the API's JSON bodies ----------------------------------------------------------------


def read_json_now(body: bytes) -> Any:
    """Run the API's ``read_json`` on ``body`` without an event loop (it never waits)."""
    from starlette.requests import Request

    from meshcloud.api.app import read_json

    sent = [False]

    async def receive() -> dict[str, Any]:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [],
             "query_string": b""}
    coro = read_json(Request(scope, receive))
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("read_json waited on something")


def api_json_target() -> Target:
    from apps.workloads.spec import parse_spec
    from meshcloud.api.app import field
    from meshcloud.errors import MeshError

    docs = [
        {"ttl_s": 3600, "uses": 2, "bootstrap": ["tcp://10.0.0.1:7946"]},
        {"peer": "a1b2c3", "address": "127.0.0.1:7000", "quick": True},
        {"spec": {"name": "web", "image": "localhost/meshcloud/web:1", "replicas": 2,
                  "ports": [{"name": "http", "port": 8080}], "env": {"A": "1"}}},
        {"spec": {"name": "db", "image": "localhost/meshcloud/busybox:1", "singleton": True,
                  "command": ["sleep", "1000"]}, "replace": False},
        {"replicas": 3, "drain": True},
    ]
    seeds = [json.dumps(d).encode() for d in docs] + [b"", b"[]", b"\"x\""]
    seeds.append(b'{"ttl_s": 1' + b"0" * 400 + b', "bootstrap": [1, "a"], "uses": NaN}')

    def run(data: bytes) -> None:
        body = read_json_now(data)
        if not isinstance(body, dict):
            raise FuzzFailure("read_json returned something other than an object")
        for name, kind, items in (("ttl_s", float, None), ("uses", int, None),
                                  ("bootstrap", list, str), ("peer", str, None),
                                  ("quick", bool, None), ("replicas", int, None)):
            try:
                value = field(body, name, kind, items=items)
            except MeshError:
                continue
            if kind is float and value is not None and not math.isfinite(value):
                raise FuzzFailure(f"field {name} let a non-finite number through")
            if items is not None and value is not None and any(type(v) is not items
                                                                for v in value):
                raise FuzzFailure(f"field {name} let a member of another type through")
        spec = body.get("spec")
        if isinstance(spec, dict):
            parsed = parse_spec(spec)
            if isinstance(parsed.replicas, int) and parsed.replicas < 0:
                raise FuzzFailure("a spec with negative replicas was accepted")

    tokens = (b"{", b"}", b"[", b"]", b"\"", b":", b",", b"1e999", b"-0", b"NaN", b"Infinity",
              b"true", b"null", b"\\u0000", b"\\ud800", b"\"spec\": {", b"\"name\": \"",
              b"[" * 3000, b"9" * 5000, b"\xff\xfe", b"\xef\xbb\xbf", b"0.1e-999999")
    return Target("api_json", seeds, run, (MeshError,), tokens, weight=0.8,
                  max_size=128 * 1024)


# --- all ----------------------------------------------------------------------------------

BUILDERS = (cbor_target, messages_target, frames_target, certs_target, invite_text_target,
            invite_cbor_target, handshake_target, handshake_payload_target,
            channel_target, mux_target, gossip_target,
            dht_target, sigv4_target, s3_request_target, chunked_target, s3_xml_target,
            s3_headers_target,
            api_json_target)


def all_targets(names: list[str] | None = None) -> list[Target]:
    chosen = [b for b in BUILDERS if names is None or b.__name__.removesuffix("_target")
              in names or any(n in b.__name__ for n in names)]
    return [b() for b in chosen]


def allocate(targets: list[Target], total: int) -> dict[str, int]:
    """Split ``total`` inputs by weight (each target gets at least one)."""
    weights = sum(t.weight for t in targets)
    shares = {t.name: max(1, math.floor(total * t.weight / weights)) for t in targets}
    for t in sorted(targets, key=lambda t: -t.weight)[: max(0, total - sum(shares.values()))]:
        shares[t.name] += 1  # the rounding remainder, so that the shares add up to total
    return shares
