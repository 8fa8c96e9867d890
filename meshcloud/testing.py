"""Helpers for tests, the simulator and benchmarks (product code, tested like the rest).

:class:`TestMesh` makes a mesh's worth of real keys and certificates in one call, so tests
exercise the same admission path as real agents. Transport conformance checks live in
:mod:`meshcloud.transport.conformance`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshcloud.auth import MeshAuthenticator
from meshcloud.identity.certs import MeshCert, genesis_cert, issue_cert, make_join_proof
from meshcloud.identity.invites import InviteToken, create_invite
from meshcloud.identity.keys import SigningKey
from meshcloud.membership import MemoryMembershipRecords

if TYPE_CHECKING:
    from meshcloud.join import JoinService
    from meshcloud.transport.base import Transport

TEST_EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the wall clock of tests that need one."""


class TrioClock:
    """Wall time that follows trio's (virtual, in tests) clock: with ``autojump_clock`` a
    test's timestamps are as deterministic as its timeouts."""

    def __init__(self, epoch_ms: int = TEST_EPOCH_MS) -> None:
        self.epoch_ms = epoch_ms

    def monotonic(self) -> float:
        import trio

        return trio.current_time()

    def wall_ms(self) -> int:
        return self.epoch_ms + int(self.monotonic() * 1000)


def forge_issuer_signature(cert: MeshCert, signature: bytes = bytes(64)) -> MeshCert:
    """``cert`` with its first link's issuer signature replaced (it must then be refused)."""
    link = dataclasses.replace(cert.links[0], issuer_signature=signature)
    return MeshCert(links=(link, *cert.links[1:]))


@dataclass
class TestMember:
    key: SigningKey
    cert: MeshCert
    records: MemoryMembershipRecords
    authenticator: MeshAuthenticator

    @property
    def id(self) -> bytes:
        return self.key.id

    def join_service(self, mesh: TestMesh, transport: Transport) -> JoinService:
        """This member's join service (it alone counts the invites made by
        :meth:`TestMesh.invite`), issuing on ``transport``."""
        from meshcloud.join import JoinService
        from meshcloud.redemption import LedgerBook, LedgerService

        ledger = LedgerService(LedgerBook(self.id, mesh.root.public), mesh.wall_ms,
                               self.records.is_revoked)
        return JoinService(self.key, self.cert, mesh.root.public, "test", self.records,
                           mesh.wall_ms, contacts=lambda: [], transport=transport,
                           ledger=ledger)


@dataclass
class TestMesh:
    """A mesh root key and any number of certified members."""

    __test__ = False  # not a pytest class

    root: SigningKey = field(default_factory=SigningKey.generate)
    members: list[TestMember] = field(default_factory=list)
    now_ms: int = TEST_EPOCH_MS

    def wall_ms(self) -> int:
        return self.now_ms

    def add_member(self) -> TestMember:
        key = SigningKey.generate()
        if not self.members:
            cert = genesis_cert(self.root, key, now=self.now_ms, mesh_name="test")
        else:
            issuer = self.members[0]
            token = create_invite(self.root, now=self.now_ms, ttl_ms=3_600_000, uses=1,
                                  bootstrap=(), ledger=(issuer.id,))
            proof = make_join_proof(token, key, now=self.now_ms)
            cert = issue_cert(proof, issuer.key, issuer.cert, now=self.now_ms)
        records = MemoryMembershipRecords()
        member = TestMember(key, cert, records,
                            MeshAuthenticator(self.root.public, records, self.wall_ms, cert))
        self.members.append(member)
        return member

    def invite(self, *, uses: int = 1, ttl_ms: int = 3_600_000) -> InviteToken:
        """An invite counted by the first member alone."""
        return create_invite(self.root, now=self.now_ms, ttl_ms=ttl_ms, uses=uses,
                             bootstrap=(), ledger=(self.members[0].id,))

    def outsider(self) -> tuple[SigningKey, MeshAuthenticator]:
        """A key with no certificate: every member must refuse it."""
        key = SigningKey.generate()
        return key, MeshAuthenticator(self.root.public, MemoryMembershipRecords(),
                                      self.wall_ms, None)

    @classmethod
    def with_members(cls, n: int) -> TestMesh:
        mesh = cls()
        for _ in range(n):
            mesh.add_member()
        return mesh
