"""One node: its identity, its services, and how they are wired together.

:class:`Node` is built from a data dir and a config without doing any I/O beyond reading
its files; :meth:`Node.run` starts the services in one nursery (transport first, the API
last, so that "started" means "answering"), and cancelling that nursery stops them all.
Every service is reachable from here for the API and the CLI, and nothing else holds
global state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

import meshcloud
from dht.config import DhtConfig
from dht.driver import DhtDriver
from meshcloud.auth import MeshAuthenticator
from meshcloud.clock import Clock, SystemClock
from meshcloud.config import NodeConfig, parse_host_port
from meshcloud.datadir import DataDir, MeshInfo
from meshcloud.errors import DataDirError, MeshError
from meshcloud.events import EventFeed
from meshcloud.identity.invites import MAX_LEDGER, InviteToken, create_invite
from meshcloud.identity.keys import SigningKey, short_id
from meshcloud.join import JOIN_PROTOCOL, JoinService, PeerContact
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.redemption import REDEEM_PROTOCOL, FileLedgerBook, LedgerService
from meshcloud.revocation import RevocationEnforcer, sign_revocation
from meshcloud.state.driver import StateDriver
from meshcloud.state.store import LmdbKv
from meshcloud.state.tables import CLUSTER_TABLES, TableMembershipRecords
from meshcloud.transport.base import PeerConnected, PeerDisconnected, Transport

log = logging.getLogger(__name__)

TransportFactory = Callable[[SigningKey, MeshAuthenticator, NodeConfig], Transport]

RECONNECT_INTERVAL = 2.0
"""Seconds between DHT join attempts while this node is alone (times five)."""
MOVED_PEER_INTERVAL = 30.0
"""Seconds between DHT look-ups of members held dead (they may have changed address)."""


def tcp_transport(key: SigningKey, authenticator: MeshAuthenticator,
                  config: NodeConfig) -> Transport:
    from meshcloud.transport.tcp import TcpConfig, TcpTransport

    base = TcpConfig.phone() if config.profile == "phone" else TcpConfig.lan()
    tcp_config = dataclasses.replace(base, agent_version=meshcloud.__version__,
                                     max_connections=config.max_connections)
    return TcpTransport(key, authenticator, listen=config.listen, config=tcp_config)


@dataclass
class PeerRecord:
    node_id: bytes
    addresses: list[str] = field(default_factory=list)
    connected: bool = False
    since: float = 0.0
    agent_version: str = ""
    last_change_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.node_id.hex(), "addresses": self.addresses,
                "connected": self.connected, "agent_version": self.agent_version,
                "last_change": self.last_change_ms}


class Node:
    def __init__(self, datadir: DataDir, config: NodeConfig, *, clock: Clock | None = None,
                 transport_factory: TransportFactory = tcp_transport) -> None:
        self.datadir = datadir
        self.config = config
        self.clock = clock or SystemClock()
        self.key = datadir.node_key()
        self.mesh: MeshInfo = datadir.mesh()
        if self.mesh.cert is None:
            raise DataDirError(
                f"{datadir.path} has not finished joining; run `meshcloud join TOKEN` again"
            )
        self.cert = self.mesh.cert
        self.root_key = datadir.root_key()
        # admission needs the membership records, which live in the replicated state,
        # which needs the transport, which needs admission: start with the records kept
        # on disk by earlier versions and switch to the table once the state exists
        self.authenticator = MeshAuthenticator(
            self.mesh.root_public, MemoryMembershipRecords(), self.clock.wall_ms, self.cert
        )
        self.transport = transport_factory(self.key, self.authenticator, config)
        datadir.ensure()
        self.state = StateDriver(self.transport, LmdbKv(datadir.state_dir / "cluster",
                                                           background_sync=True),
                                 view=self.alive_peer_ids, clock=self.clock)
        for schema in CLUSTER_TABLES:
            self.state.open_table(schema)
        self.records = TableMembershipRecords(self.state, self.mesh.root_public)
        self.authenticator.records = self.records
        self.ledger = LedgerService(
            FileLedgerBook(datadir.path / "redemption-ledger.json", self.key.id,
                           self.mesh.root_public),
            self.clock.wall_ms, self.records.is_revoked)
        self.revocations = RevocationEnforcer(self.transport, self._is_revoked_peer,
                                              on_cut=self._on_revoked_cut)
        from meshcloud.agent.members import Members

        self.members = Members(self)
        self.stop_requested = trio.Event()
        self.events = EventFeed(self.clock.wall_ms, self.key.id.hex())
        self.peers: dict[bytes, PeerRecord] = {}
        self._load_peers()
        self.join_service = JoinService(
            self.key, self.cert, self.mesh.root_public, self.mesh.mesh_name, self.records,
            self.clock.wall_ms, self.contacts, transport=self.transport, ledger=self.ledger,
            root_key=self.root_key, on_admitted=self._on_admitted,
        )
        from meshcloud.agent.diagnostics import Diagnostics

        self.diagnostics = Diagnostics(self)
        self.dht: DhtDriver | None = None
        self.api_urls: list[str] = []
        from meshcloud.agent.compose import build_services

        self.services = build_services(self)
        self.route_providers: list[Callable[[], list[Any]]] = [
            s.api_routes for s in self.services if hasattr(s, "api_routes")]
        """API routes of the services (each a callable returning Starlette routes)."""
        self.ui_route_providers: list[Callable[..., list[Any]]] = [
            s.ui_routes for s in self.services if hasattr(s, "ui_routes")]
        """UI pages of the services: callables (base_context, render) -> routes."""
        self.started_at_ms = 0
        self.stopping = trio.Event()
        self._peer_set_changed = trio.Event()

    def alive_peer_ids(self) -> frozenset[bytes]:
        """The other members that gossip holds alive (or only suspects)."""
        return self.members.alive_ids()

    def bootstrap_addresses(self) -> list[str]:
        return list(self._bootstrap_addresses)

    # --- identity -------------------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self.key.id

    @property
    def is_admin(self) -> bool:
        return self.root_key is not None

    def advertised_addresses(self) -> list[str]:
        if self.config.advertise:
            return list(self.config.advertise)
        return expand_wildcards(self.transport.listen_addresses)

    def create_invite(self, *, ttl_s: float, uses: int,
                      bootstrap: list[str] | None = None) -> InviteToken:
        if self.root_key is None:
            raise MeshError("this node holds no admin key: create invites on the node where "
                            "`meshcloud init` ran", code="not_admin")
        token = create_invite(
            self.root_key, now=self.clock.wall_ms(), ttl_ms=int(ttl_s * 1000), uses=uses,
            bootstrap=tuple(bootstrap or self.advertised_addresses()),
            mesh_name=self.mesh.mesh_name, ledger=self._ledger_members(),
        )
        self.events.emit("invite.created", invite=token.invite.invite_id.hex()[:8], uses=uses,
                         expires_at=token.invite.body.expires_at)
        return token

    def _ledger_members(self) -> tuple[bytes, ...]:
        """Who counts a new invite's uses: this node and up to two live members, the
        longest-connected first (they are the likeliest to be up when the invite is used)."""
        alive = self.alive_peer_ids()
        connected = sorted((p for p in self.peers.values() if p.connected and p.node_id in alive),
                           key=lambda p: (p.since, p.node_id))
        return (self.node_id, *[p.node_id for p in connected][:MAX_LEDGER - 1])

    def revoke(self, kind: str, subject: bytes) -> dict[str, Any]:
        """Revoke a node or an invite (admin only): signed with the root key, spread by
        the replicated state, enforced by every member on handshakes and open connections."""
        if self.root_key is None:
            raise MeshError("this node holds no admin key: revoke on the node where "
                            "`meshcloud init` ran", code="not_admin")
        if kind == "node" and subject == self.node_id:
            raise MeshError("a node cannot revoke itself; run `meshcloud revoke` on the "
                            "admin node for another node, or `meshcloud leave` here",
                            code="bad_request")
        at = self.clock.wall_ms()
        self.records.add_revocation(kind, subject, at, sign_revocation(self.root_key, kind,
                                                                       subject, at))
        self.events.emit(f"{kind}.revoked", subject=subject.hex())
        log.warning("revoked", extra={"kind": kind, "subject": subject.hex()[:12]})
        return {"kind": kind, "id": subject.hex(), "at": at}

    def _is_revoked_peer(self, peer: Any) -> bool:
        from meshcloud.auth import is_cert_revoked

        return peer.cert is not None and is_cert_revoked(peer.cert, self.records)

    def _on_revoked_cut(self, node_id: bytes) -> None:
        self.events.emit("peer.revoked", peer=node_id.hex())

    def known_node_ids(self) -> list[bytes]:
        ids = [bytes.fromhex(m["id"]) for m in self.members_view()]
        return list(dict.fromkeys([self.node_id, *ids, *self.peers]))

    async def leave(self) -> None:
        """Leave the mesh gracefully; the agent then stops (see :meth:`request_stop`)."""
        await self.members.leave()

    async def request_stop(self) -> None:
        self.stop_requested.set()

    def extra_nav(self) -> list[tuple[str, str, str, bool]]:
        return [entry for s in self.services if hasattr(s, "nav") for entry in s.nav()]

    def members_view(self) -> list[dict[str, Any]]:
        """Every known member with its state, for `status`, the API and the UI."""
        return self.members.view()

    # --- peers ----------------------------------------------------------------------------

    def contacts(self) -> list[PeerContact]:
        me = PeerContact(node_id=self.node_id, addresses=tuple(self.advertised_addresses()))
        others = [PeerContact(node_id=p.node_id, addresses=tuple(p.addresses))
                  for p in self.peers.values() if p.addresses]
        return [me, *others]

    def _on_admitted(self, cert: Any) -> None:
        self.events.emit("node.admitted", peer=cert.node_id.hex(),
                         issuer=self.node_id.hex())

    def _load_peers(self) -> None:
        path = self.datadir.path / "peers.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        for contact in self.mesh.bootstrap:
            data.setdefault("bootstrap", []).append(contact)
        for hex_id, addresses in data.get("peers", {}).items():
            node_id = bytes.fromhex(hex_id)
            if node_id != self.node_id:
                self.peers[node_id] = PeerRecord(node_id, list(addresses))
        self._bootstrap_addresses = list(dict.fromkeys(data.get("bootstrap", [])))

    def _save_peers(self) -> None:
        path = self.datadir.path / "peers.json"
        data = {"peers": {p.node_id.hex(): p.addresses for p in self.peers.values()
                          if p.addresses}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    def learn_peer(self, node_id: bytes, addresses: list[str]) -> None:
        if node_id == self.node_id or not addresses:
            return
        record = self.peers.setdefault(node_id, PeerRecord(node_id))
        if record.addresses != list(addresses):
            record.addresses = list(addresses)
            self.transport.set_addresses(node_id, record.addresses)
            self._save_peers()

    async def _watch_peers(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for event in events:
            now = self.clock.wall_ms()
            if isinstance(event, PeerConnected):
                peer = event.peer
                if peer.joining:
                    continue
                record = self.peers.setdefault(peer.node_id, PeerRecord(peer.node_id))
                record.connected = True
                record.since = self.clock.monotonic()
                record.agent_version = peer.agent_version
                record.last_change_ms = now
                if peer.listen_addresses:
                    self.learn_peer(peer.node_id, expand_wildcards(
                        list(peer.listen_addresses), host_hint=event.address))
                log.info("peer connected", extra={"peer": short_id(peer.node_id),
                                                   "address": event.address})
                self.events.emit("peer.connected", peer=peer.node_id.hex(),
                                 address=event.address)
            elif isinstance(event, PeerDisconnected):
                record = self.peers.get(event.node_id)
                if record is None or not record.connected:
                    continue
                record.connected = False
                record.last_change_ms = now
                log.info("peer disconnected", extra={"peer": short_id(event.node_id),
                                                      "why": event.reason})
                self.events.emit("peer.disconnected", peer=event.node_id.hex(),
                                 reason=event.reason)
            self._peer_set_changed.set()
            self._peer_set_changed = trio.Event()

    async def _find_moved_peers(self) -> None:
        """Members we hold dead may only have moved (a phone on another network): ask the
        DHT for their current signed addresses now and then, and dial those."""
        while not self.stopping.is_set():
            with trio.move_on_after(MOVED_PEER_INTERVAL):
                await self.stopping.wait()
            if self.dht is None or self.stopping.is_set():
                continue
            for member in self.members_view():
                if member["state"] != "dead":
                    continue
                node_id = bytes.fromhex(member["id"])
                fresh = None  # stays None if the look-up times out
                try:
                    with trio.move_on_after(10):
                        fresh = await self.dht.find_peer(node_id)
                except MeshError:
                    continue
                if fresh and sorted(fresh) != sorted(member["addresses"]):
                    log.info("peer moved", extra={"peer": short_id(node_id),
                                                  "addresses": ",".join(fresh)})
                    self.learn_peer(node_id, fresh)

    def _make_dht(self) -> DhtDriver:
        presets = {"lan": DhtConfig.lan, "wan": DhtConfig.wan, "local": DhtConfig.local,
                   "phone": DhtConfig.phone}
        return DhtDriver.create(self.transport, self.key, presets[self.config.profile](),
                                wall_ms=self.clock.wall_ms)

    async def _keep_in_dht(self) -> None:
        """Join the DHT through any known member, publish our addresses, and do it again
        whenever we have been alone (after a restart, a partition, a network change)."""
        assert self.dht is not None
        published: list[str] = []
        while not self.stopping.is_set():
            seeds = [a for p in self.peers.values() for a in p.addresses]
            seeds += [a for a in self._bootstrap_addresses if a not in seeds]
            seeds = [a for a in seeds if a not in self.advertised_addresses()]
            if seeds and self.dht.statistics().routing_table_size == 0:
                with trio.move_on_after(30):
                    try:
                        await self.dht.bootstrap(seeds)
                    except MeshError as exc:
                        log.debug("DHT bootstrap failed", extra={"why": str(exc)})
            addresses = self.advertised_addresses()
            if addresses != published and self.dht.statistics().routing_table_size > 0:
                with trio.move_on_after(30):
                    try:
                        await self.dht.publish_self(addresses)
                        published = addresses
                    except MeshError as exc:
                        log.debug("DHT publish failed", extra={"why": str(exc)})
            with trio.move_on_after(RECONNECT_INTERVAL * 5):
                await self.stopping.wait()

    # --- running --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock.wall_ms()
        return {
            "node": {
                "id": self.node_id.hex(),
                "mesh_id": self.mesh.mesh_id.hex(),
                "mesh_name": self.mesh.mesh_name,
                "admin": self.is_admin,
                "addresses": self.advertised_addresses(),
                "api": self.api_urls,
                "started_at": self.started_at_ms,
                "uptime_s": round((now - self.started_at_ms) / 1000, 1)
                if self.started_at_ms else 0,
                "issuer": self.cert.issuer_id.hex(),
                "cert_links": self.cert.depth,
                "pid": os.getpid(),
            },
            "peers": sorted((p.to_json() for p in self.peers.values()),
                            key=lambda p: (not p["connected"], p["id"])),
            "members": self.members_view(),
            "loop": self.members.loop_status(),
            "versions": versions(),
            **({"transport": self.transport.statistics()}
               if hasattr(self.transport, "statistics") else {}),
            **{s.name: s.status() for s in self.services if hasattr(s, "status")},
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from meshcloud.api.server import serve_api

        self.started_at_ms = self.clock.wall_ms()
        async with trio.open_nursery() as nursery:
            self.transport.serve(JOIN_PROTOCOL, self.join_service.handle)
            self.transport.serve(REDEEM_PROTOCOL, self.ledger.handle)
            await nursery.start(self.transport.run)
            # subscribe before anything can dial, so that no connection goes unseen
            nursery.start_soon(self._watch_peers, self.transport.peer_events())
            await nursery.start(self.state.run)
            await nursery.start(self.revocations.run)
            self.dht = self._make_dht()
            await nursery.start(self.dht.run)
            nursery.start_soon(self._keep_in_dht)
            for record in self.peers.values():
                self.transport.set_addresses(record.node_id, record.addresses)
            await nursery.start(self.diagnostics.run)
            await nursery.start(self.members.run)
            nursery.start_soon(self._find_moved_peers)
            for service in self.services:
                await nursery.start(service.run)
            self.api_urls = await nursery.start(serve_api, self)
            self.datadir.write_runtime_info({
                "pid": os.getpid(),
                "node_id": self.node_id.hex(),
                "api": self.api_urls[0] if self.api_urls else None,
                "listen": self.transport.listen_addresses,
                "advertise": self.advertised_addresses(),
                "started_at": self.started_at_ms,
                **{k: v for s in self.services if hasattr(s, "runtime_info")
                   for k, v in s.runtime_info().items()},
            })
            log.info("node started", extra={"node": short_id(self.node_id),
                                             "listen": ",".join(self.transport.listen_addresses),
                                             "api": ",".join(self.api_urls)})
            self.events.emit("node.started", addresses=self.advertised_addresses())
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.stopping.set()
                self.datadir.clear_runtime_info()
                log.info("node stopped", extra={"node": short_id(self.node_id)})


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"meshcloud": meshcloud.__version__, "python": platform.python_version()}
    for name in ("trio", "pynacl", "cbor2", "lmdb", "zfec", "hypercorn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["platform"] = f"{platform.system().lower()}-{platform.machine()}"
    return out


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
