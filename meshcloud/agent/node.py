"""One node: its identity and parts, and how they are wired together.

:class:`Node` is built from a data dir and a config without doing any I/O beyond reading
its files; :meth:`Node.run` starts the parts in one nursery (transport first, the API
last, so that "started" means "answering"), and cancelling that nursery stops them all.
The address book is :mod:`.peers`, discovery upkeep :mod:`.discovery`, the status JSON
:mod:`.status`, network helpers :mod:`.net`; the services and the API server come from
the composition module :mod:`.compose`. Nothing else holds global state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from meshcloud.agent import admin
from meshcloud.agent.diagnostics import Diagnostics
from meshcloud.agent.discovery import Discovery
from meshcloud.agent.members import Members
from meshcloud.agent.nat import NatKeeper
from meshcloud.agent.net import TransportFactory, tcp_transport
from meshcloud.agent.peers import AddressBook, PeerRecord
from meshcloud.agent.profiles import open_state, revocation_interval
from meshcloud.agent.status import node_status
from meshcloud.auth import MeshAuthenticator, is_cert_revoked
from meshcloud.clock import Clock, SystemClock
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir, MeshInfo
from meshcloud.errors import DataDirError
from meshcloud.events import EventFeed
from meshcloud.identity.invites import InviteToken
from meshcloud.identity.keys import short_id
from meshcloud.join import JOIN_PROTOCOL, JoinService, PeerContact
from meshcloud.kit.service import NodeContext, Service
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.redemption import REDEEM_PROTOCOL, FileLedgerBook, LedgerService
from meshcloud.revocation import RevocationEnforcer
from meshcloud.state.tables import CLUSTER_TABLES, MEMBERSHIP, TableMembershipRecords

log = logging.getLogger(__name__)

ServiceFactory = Callable[[NodeContext], list[Service]]


class Node:
    def __init__(self, datadir: DataDir, config: NodeConfig, *, clock: Clock | None = None,
                 transport_factory: TransportFactory = tcp_transport,
                 services: ServiceFactory | None = None) -> None:
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
        self.state = open_state(self.transport, datadir.state_dir / "cluster",
                                self.alive_peer_ids, self.clock, config.profile)
        for schema in CLUSTER_TABLES:
            self.state.open_table(schema)
        self.records = TableMembershipRecords(self.state, self.mesh.root_public)
        self.authenticator.records = self.records
        self.ledger = LedgerService(
            FileLedgerBook(datadir.path / "redemption-ledger.json", self.key.id,
                           self.mesh.root_public),
            self.clock.wall_ms, self.records.is_revoked)
        self.revocations = RevocationEnforcer(
            self.transport, lambda peer: peer.cert is not None and is_cert_revoked(
                peer.cert, self.records), interval=revocation_interval(config.profile),
            on_cut=lambda node_id: self.members.revoked_cut(node_id),
            watch=self.state.watch(MEMBERSHIP.name))
        self.members = Members(self)
        self.stop_requested = trio.Event()
        self.events = EventFeed(self.clock.wall_ms, self.key.id.hex())
        self.book = AddressBook(datadir.path / "peers.json", self.key.id, self.transport,
                                self.clock, self.events, list(self.mesh.bootstrap))
        self.join_service = JoinService(
            self.key, self.cert, self.mesh.root_public, self.mesh.mesh_name, self.records,
            self.clock.wall_ms, self.contacts, transport=self.transport, ledger=self.ledger,
            root_key=self.root_key, on_admitted=lambda cert: self.events.emit(
                "node.admitted", peer=cert.node_id.hex(), issuer=self.node_id.hex()),
        )
        self.diagnostics, self.nat = Diagnostics(self), NatKeeper(self)
        self.discovery = Discovery(self.transport, self.key, config.profile, self.clock,
                                   self.book, self.advertised_addresses, self.members_view)
        self.api_urls: list[str] = []
        if services is None:
            from meshcloud.agent.compose import build_services as services
        self.services: list[Service] = services(self)
        self.started_at_ms = 0

    # --- what services and the API see ------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self.key.id

    @property
    def is_admin(self) -> bool:
        return self.root_key is not None

    @property
    def peers(self) -> dict[bytes, PeerRecord]:
        return self.book.peers

    def alive_peer_ids(self) -> frozenset[bytes]:
        """The other members that gossip holds alive (or only suspects)."""
        return self.members.alive_ids()

    def members_view(self) -> list[dict[str, Any]]:
        """Every known member with its state, for `status`, the API and the UI."""
        return self.members.view()

    def known_node_ids(self) -> list[bytes]:
        ids = [bytes.fromhex(m["id"]) for m in self.members_view()]
        return list(dict.fromkeys([self.node_id, *ids, *self.peers]))

    def advertised_addresses(self) -> list[str]:  # behind NAT, the relays first (.nat)
        return self.nat.advertised_addresses()

    def contacts(self) -> list[PeerContact]:
        me = PeerContact(node_id=self.node_id, addresses=tuple(self.advertised_addresses()))
        others = [PeerContact(node_id=p.node_id, addresses=tuple(p.addresses))
                  for p in self.peers.values() if p.addresses]
        return [me, *others]

    def status(self) -> dict[str, Any]:
        return node_status(self)

    # --- admin operations (meshcloud/agent/admin.py) --------------------------------------

    def create_invite(self, *, ttl_s: float, uses: int,
                      bootstrap: list[str] | None = None) -> InviteToken:
        return admin.create_invite(self, ttl_s=ttl_s, uses=uses, bootstrap=bootstrap)

    def revoke(self, kind: str, subject: bytes) -> dict[str, Any]:
        return admin.revoke(self, kind, subject)

    async def leave(self) -> None:
        """Leave the mesh gracefully; the agent then stops (:meth:`request_stop`)."""
        await self.members.leave()

    async def request_stop(self) -> None:
        self.stop_requested.set()

    # --- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from meshcloud.agent.compose import serve_faces

        self.started_at_ms = self.clock.wall_ms()
        async with trio.open_nursery() as nursery:
            self.transport.serve(JOIN_PROTOCOL, self.join_service.handle)
            self.transport.serve(REDEEM_PROTOCOL, self.ledger.handle)
            await nursery.start(self.transport.run)
            # subscribe before anything can dial, so that no connection goes unseen
            nursery.start_soon(self.book.watch, self.transport.peer_events())
            await nursery.start(self.state.run)
            await nursery.start(self.revocations.run)
            await nursery.start(self.discovery.run)
            self.book.dial_known()
            await nursery.start(self.diagnostics.run)
            await nursery.start(self.members.run)
            await nursery.start(self.nat.run)
            for service in self.services:
                await nursery.start(service.run)
            self.api_urls = await nursery.start(serve_faces, self)
            self.datadir.write_runtime_info({
                "pid": os.getpid(), "node_id": self.node_id.hex(),
                "api": self.api_urls[0] if self.api_urls else None,
                "listen": self.transport.listen_addresses,
                "advertise": self.advertised_addresses(), "started_at": self.started_at_ms,
                **{k: v for s in self.services for k, v in s.runtime_info().items()},
            })
            log.info("node started", extra={"node": short_id(self.node_id),
                                             "listen": ",".join(self.transport.listen_addresses),
                                             "api": ",".join(self.api_urls)})
            self.events.emit("node.started", addresses=self.advertised_addresses())
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.datadir.clear_runtime_info()
                log.info("node stopped", extra={"node": short_id(self.node_id)})
