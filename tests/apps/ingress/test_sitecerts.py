"""The site-certificate driver on a node, around an in-memory table fake: the admin seals
keys only to unrevoked nodes (and to late joiners), nodes install only rows signed by the
root key, and a row that expires or goes away is uninstalled."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.ingress.messages import SiteCert
from apps.ingress.sitecerts import SiteCerts
from apps.ingress.tables import SITE_CERTS, site_certs
from meshcloud.errors import MeshError
from meshcloud.identity.keys import SigningKey


class FakeState:
    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[Any, ...], Any]] = {}

    def open_table(self, schema: Any) -> None:
        self.tables.setdefault(schema.name, {})

    def put(self, table: str, key: tuple[Any, ...], value: Any) -> None:
        self.tables[table][key] = value

    def scan(self, table: str) -> list[tuple[tuple[Any, ...], Any]]:
        return sorted(self.tables[table].items())


@dataclass
class FakeDataDir:
    path: Path
    key: SigningKey

    def node_key(self) -> SigningKey:
        return self.key


@dataclass
class FakeMesh:
    mesh_id: bytes
    root_public: bytes
    mesh_name: str = "home"


@dataclass
class FakeRecords:
    revoked: set[bytes] = field(default_factory=set)

    def revocations(self) -> list[tuple[str, bytes, int]]:
        return [("node", n, 0) for n in self.revoked]


class FakeClock:
    def __init__(self, wall: float) -> None:
        self.wall = wall

    def wall_ms(self) -> int:
        return int(self.wall * 1000)


ROOT = SigningKey.generate()
NOW = 1_800_000_000.0


def node(tmp_path: Path, name: str, state: FakeState, records: FakeRecords, clock: FakeClock,
         admin: bool = False) -> SiteCerts:
    key = SigningKey.generate()
    ctx = type("Ctx", (), {})()
    ctx.node_id, ctx.state, ctx.clock, ctx.records = key.id, state, clock, records
    ctx.datadir = FakeDataDir(tmp_path / name, key)
    ctx.mesh = FakeMesh(ROOT.id, ROOT.public)
    ctx.root_key = ROOT if admin else None
    return SiteCerts(ctx)


@pytest.fixture
def mesh(tmp_path):
    state, records, clock = FakeState(), FakeRecords(), FakeClock(NOW)
    admin = node(tmp_path, "admin", state, records, clock, admin=True)
    member = node(tmp_path, "member", state, records, clock)
    revoked = node(tmp_path, "revoked", state, records, clock)
    for n in (admin, member, revoked):
        n.publish_key()
    records.revoked.add(revoked.node.node_id)
    return state, clock, admin, member, revoked


def pem_of(n: SiteCerts, host: str) -> Path:
    return n.certs_dir / f"{host}.pem"


def test_keys_are_sealed_to_unrevoked_nodes_and_installed_0600(mesh):
    state, _, admin, member, revoked = mesh
    reply = admin.issue("Blog.Home", 30)
    assert reply["host"] == "blog.home" and reply["nodes"] == 2
    row = site_certs(state)["blog.home"]
    assert {n for n, _ in row.sealed} == {admin.node.node_id, member.node.node_id}
    assert b"PRIVATE KEY" not in b"".join(box for _, box in row.sealed)
    for n in (admin, member, revoked):
        n.sync()
    path = pem_of(member, "blog.home")
    assert b"PRIVATE KEY" in path.read_bytes() and path.read_bytes().startswith(row.cert_pem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not pem_of(revoked, "blog.home").exists()
    assert revoked.errors["blog.home"] == "key not yet sealed to this node"
    assert admin.ca_key_path.exists() and not member.ca_key_path.exists()


def test_only_the_admin_issues_and_bad_requests_change_nothing(mesh):
    state, _, admin, member, _ = mesh
    with pytest.raises(MeshError) as caught:
        member.issue("blog.home", 30)
    assert caught.value.code == "not_admin"
    for domain, days in (("bad name", 30), ("a.home", 0), ("a.home", True), (None, 3)):
        with pytest.raises(MeshError) as caught:
            admin.issue(domain, days)
        assert caught.value.code == "bad_request"
    assert state.scan(SITE_CERTS.name) == []


def test_a_late_joiner_gets_the_key_from_the_admin(mesh, tmp_path):
    state, clock, admin, member, _ = mesh
    admin.issue("blog.home", 30)
    late = node(tmp_path, "late", state, member.node.records, clock)
    late.sync()  # publishes its key; nothing sealed to it yet
    assert not pem_of(late, "blog.home").exists()
    admin.sync()  # the admin seals the key to it
    late.sync()
    assert pem_of(late, "blog.home").read_bytes() == pem_of(admin, "blog.home").read_bytes()


def test_an_unsigned_row_is_not_installed(mesh):
    state, _, admin, member, _ = mesh
    admin.issue("blog.home", 30)
    row = site_certs(state)["blog.home"]
    # a member copies a genuine row under another host name: the signature binds the host
    state.put(SITE_CERTS.name, ("bank.home",), row)
    forged = SiteCert(cert_pem=row.cert_pem, not_after=row.not_after, sealed=row.sealed,
                      signature=bytes(64), ca_pem=row.ca_pem)
    state.put(SITE_CERTS.name, ("shop.home",), forged)
    member.sync()
    assert pem_of(member, "blog.home").exists()
    assert not pem_of(member, "bank.home").exists() and not pem_of(member, "shop.home").exists()
    assert "not signed" in member.errors["shop.home"]


def test_an_expired_or_removed_row_is_uninstalled(mesh):
    state, clock, admin, member, _ = mesh
    admin.issue("blog.home", 2)
    admin.issue("shop.home", 30)
    member.sync()
    assert pem_of(member, "blog.home").exists() and pem_of(member, "shop.home").exists()
    clock.wall += 3 * 86400
    member.sync()
    assert not pem_of(member, "blog.home").exists()
    assert member.errors["blog.home"] == "expired"
    del state.tables[SITE_CERTS.name][("shop.home",)]
    member.sync()
    assert not pem_of(member, "shop.home").exists()
    assert member.installed() == set()
