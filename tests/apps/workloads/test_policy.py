"""The workload root policy: signed statements, their checks, and real replicas obeying
them on an in-process mesh (real nodes, real state replication, real processes)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from apps.runtimes.users import is_workload_uid
from apps.workloads.errors import SpecError
from apps.workloads.policy import (
    ALLOW,
    POLICY,
    REVOKE,
    RootPolicy,
    RootPolicyCheck,
    is_valid,
    sign_policy,
)
from apps.workloads.spec import WorkloadSpec, parse_spec
from meshcloud.cli import main as cli_main
from meshcloud.identity.keys import SigningKey, key_id
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import LocalMesh, alive_replicas, wait_for

ROOT = SigningKey(b"r" * 32)
MESH = key_id(ROOT.public)
OTHER = SigningKey(b"o" * 32)


def check() -> RootPolicyCheck:
    return RootPolicyCheck(MESH, ROOT.public)


# --- statements ------------------------------------------------------------------------------


def test_a_signed_grant_allows_and_a_later_revocation_wins():
    c = check()
    grant = sign_policy(ROOT, MESH, "db", ALLOW, 1000)
    assert c.allows("db", grant)
    revoke = sign_policy(ROOT, MESH, "db", REVOKE, 2000)
    assert not c.allows("db", revoke)
    # the old grant, replayed over the revocation (any member can write any row), loses
    assert not c.allows("db", grant)
    assert c.describe("db", grant) == "superseded"
    # a newer grant from the admin wins again
    assert c.allows("db", sign_policy(ROOT, MESH, "db", ALLOW, 3000))


def test_forged_foreign_misfiled_and_unsigned_rows_are_ignored():
    c = check()
    assert not c.allows("db", sign_policy(OTHER, MESH, "db", ALLOW, 1))  # another key
    other_mesh = key_id(OTHER.public)
    assert not c.allows("db", sign_policy(ROOT, other_mesh, "db", ALLOW, 1))  # other mesh
    assert not c.allows("web", sign_policy(ROOT, MESH, "db", ALLOW, 1))  # filed elsewhere
    assert not c.allows("db", RootPolicy(workload="db", verb=ALLOW, issued_ms=1))  # unsigned
    assert not c.allows("db", None) and not c.allows("db", {"verb": ALLOW})
    good = sign_policy(ROOT, MESH, "db", ALLOW, 5)
    assert not c.allows("db", replace(good, issued_ms=6))  # the time is signed too
    assert not c.allows("db", replace(good, verb="run-as-root!"))
    assert c.describe("db", replace(good, signature=b"x" * 64)) == "invalid"
    assert c.allowed([(("db",), good), (("web",), replace(good, workload="web"))]) == {"db"}


@given(field=st.sampled_from(["workload", "verb", "issued_ms", "signature"]),
       data=st.data())
def test_any_change_to_a_signed_row_voids_it(field, data):
    good = sign_policy(ROOT, MESH, "db", ALLOW, 1234)
    value = {"workload": st.text(max_size=70), "verb": st.text(max_size=20),
             "issued_ms": st.integers(min_value=-5, max_value=1 << 62),
             "signature": st.binary(min_size=0, max_size=80)}[field]
    new = data.draw(value.filter(lambda v: v != getattr(good, field)))
    row = replace(good, **{field: new})
    assert not is_valid(MESH, ROOT.public, row.workload, row)
    assert not check().allows(row.workload if isinstance(row.workload, str) else "db", row)


def test_signed_rows_survive_the_table_codec():
    row = sign_policy(ROOT, MESH, "db", REVOKE, 99)
    assert POLICY.value_of(POLICY.plain_of(row)) == row


def test_a_spec_cannot_ask_for_root():
    for key in ("run_as_root", "privileged"):
        with pytest.raises(SpecError) as info:
            parse_spec({"name": "db", "command": ["true"], key: True})
        assert info.value.problems == [
            "a spec cannot ask to run as root: the mesh admin allows it per workload with "
            "`meshcloud policy allow-root NAME`"]
    spec = WorkloadSpec(name="db", command=("true",))
    assert "run_as_root" not in spec.to_dict()
    granted = replace(spec, run_as_root=True)
    assert granted.container_spec(0, 1).run_as_root
    assert granted.runtime_hash() != spec.runtime_hash()  # a grant restarts replicas
    assert spec.container_spec(0, 1).spec_hash() == replace(
        spec.container_spec(0, 1), run_as_root=False).spec_hash()


# --- on a mesh -------------------------------------------------------------------------------

WHOAMI = ["/bin/sh", "-c", "echo uid=$(id -u); exec sleep 3600"]


@pytest.fixture
async def mesh2(tmp_path, nursery, monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")
    mesh = await LocalMesh.create(tmp_path, nursery, 2, MemoryNetwork(seed=5))
    yield mesh
    await mesh.close()


async def replica_uid(mesh: LocalMesh, name: str = "whoami") -> tuple[str, int] | None:
    """(replica id, uid it printed) of the one live replica of ``name``."""
    for member in mesh.up():
        for status in await alive_replicas(member, name):
            runtime = member.service.runtimes[status.runtime]
            lines = [line async for line in runtime.logs(status.name)]
            if lines and lines[-1].startswith("uid="):
                return status.id, int(lines[-1][4:])
    return None


async def wait_uid(mesh: LocalMesh, want, what: str, within: float = 30.0):
    with trio.move_on_after(within):
        while True:
            got = await replica_uid(mesh)
            if got is not None and want(got):
                return got
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: last {await replica_uid(mesh)}")


async def cli(member, *args: str, capsys) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(
        lambda: cli_main(["--data-dir", str(member.datadir.path), *args]))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root agent switches replicas' users")
async def test_replicas_run_as_root_only_under_a_signed_policy(mesh2, capsys):
    a, b = mesh2.members  # a ran `init`: it holds the mesh root key
    a.service.submit({"name": "whoami", "command": WHOAMI}, replace_existing=False)
    first_id, uid = await wait_uid(mesh2, lambda got: True, "a first replica")
    assert uid != 0 and is_workload_uid(uid)

    # a member forges a grant (its own key) and writes an unsigned one: both ignored
    mesh_id = b.running.mesh.mesh_id
    for forged in (sign_policy(b.running.key, mesh_id, "whoami", ALLOW, 10**13),
                   RootPolicy(workload="whoami", verb=ALLOW, issued_ms=10**13)):
        b.running.state.put(POLICY.name, "whoami", forged)
        await wait_for(lambda f=forged: all(m.running.state.get(POLICY.name, "whoami") == f
                                            for m in mesh2.up()), "the row everywhere")
        for member in mesh2.up():  # a full pass after the row arrived, on every node
            passes = member.service.reconciler.passes
            member.service.poke()
            await wait_for(lambda m=member, p=passes: m.service.reconciler.passes > p + 1,
                           "two reconciler passes")
            assert member.service.policy.allowed() == set()
        assert await replica_uid(mesh2) == (first_id, uid)  # not restarted, not root

    # only the node with the root key can sign
    code, _, err = await cli(b, "policy", "allow-root", "whoami", capsys=capsys)
    assert code == 1 and "no admin key" in err
    code, out, err = await cli(a, "policy", "allow-root", "whoami", capsys=capsys)
    assert code == 0 and "may run as root" in out, err
    root_id, _ = await wait_uid(mesh2, lambda got: got[1] == 0, "a root replica")
    assert root_id != first_id
    code, out, _ = await cli(b, "policy", "list", capsys=capsys)
    assert code == 0 and out.split() == ["whoami", "run-as-root", "allowed"]
    grant = a.running.state.get(POLICY.name, "whoami")

    code, out, err = await cli(a, "policy", "revoke-root", "whoami", capsys=capsys)
    assert code == 0, err
    _, again = await wait_uid(mesh2, lambda got: got[1] != 0, "an unprivileged replica")
    assert again == uid  # the workload's own uid again (its files are still its own)

    # replaying the admin's old grant over the revocation does not bring root back
    await wait_for(lambda: all(m.running.state.get(POLICY.name, "whoami").verb == REVOKE
                               and m.service.policy.allowed() == set() for m in mesh2.up()),
                   "the revocation seen everywhere")
    b.running.state.put(POLICY.name, "whoami", grant)
    await wait_for(lambda: all(m.running.state.get(POLICY.name, "whoami") == grant
                               for m in mesh2.up()), "the replayed row everywhere")
    for member in mesh2.up():
        assert member.service.policy.allowed() == set()
    assert (await replica_uid(mesh2))[1] == uid


class _Table:
    """The three calls RootPolicyOps makes on the state, over a dict (unit test only)."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}

    def get(self, table: str, key: str) -> object:
        return self.rows.get(key)

    def put(self, table: str, key: str, value: object) -> None:
        self.rows[key] = value

    def scan(self, table: str) -> list[tuple[tuple[str], object]]:
        return [((k,), v) for k, v in sorted(self.rows.items())]


def test_a_seen_revocation_outlives_a_restart(tmp_path):
    from apps.workloads.policy_ops import RootPolicyOps
    from meshcloud.errors import MeshError

    table = _Table()
    admin = RootPolicyOps(table, MESH, ROOT.public, ROOT, lambda: 1000, tmp_path / "a")
    admin.set_root("db", True)
    grant = table.rows["db"]
    node = RootPolicyOps(table, MESH, ROOT.public, None, lambda: 0, tmp_path / "b")
    assert node.allowed() == {"db"}
    admin.set_root("db", False)  # same millisecond: issued one later all the same
    assert table.rows["db"].issued_ms == 1001 and node.allowed() == set()
    table.put(POLICY.name, "db", grant)  # replayed by a member
    restarted = RootPolicyOps(table, MESH, ROOT.public, None, lambda: 0, tmp_path / "b")
    assert restarted.allowed() == set()
    fresh = RootPolicyOps(table, MESH, ROOT.public, None, lambda: 0, tmp_path / "c")
    assert fresh.allowed() == {"db"}  # a node that never saw the revocation: the limit
    with pytest.raises(MeshError) as info:
        node.set_root("db", True)
    assert info.value.code == "not_admin"
    with pytest.raises(MeshError):
        admin.set_root("../etc", True)
