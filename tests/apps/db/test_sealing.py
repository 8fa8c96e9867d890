"""Database passwords: sealed in the replicated rows, opened only by member nodes; old
rows with passwords in clear still work and are rewritten sealed; errors never hold a
password; `db rm` helpers (which stanzas are a database's, what the CLI says)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import nacl.public
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from apps.db import pg
from apps.db.backup import Backup, check_restore_time, is_stanza_of, repo_roots
from apps.db.cli import rm_text
from apps.db.core import DbError
from apps.db.messages import DbSpec
from apps.db.sealing import DbPasswords, Passwords, PasswordsUnavailable
from apps.db.tables import DB_SECRET_KEYS
from meshcloud.codec.messages import encode_message


class FakeState:
    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, object]] = {}

    def get(self, table, key):
        return self.rows.get(table, {}).get(key if isinstance(key, tuple) else (key,))

    def put(self, table, key, value):
        self.rows.setdefault(table, {})[key if isinstance(key, tuple) else (key,)] = value

    def delete(self, table, key):
        self.rows.get(table, {}).pop(key if isinstance(key, tuple) else (key,), None)

    def scan(self, table, partition=()):
        return sorted((k, v) for k, v in self.rows.get(table, {}).items()
                      if k[:len(partition)] == tuple(partition))


class Mesh:
    def __init__(self) -> None:
        self.state = FakeState()
        self.published: dict[bytes, bytes] = {}

    def node(self, node_id: bytes) -> DbPasswords:
        node = DbPasswords(self.state, node_id, bytes(nacl.public.PrivateKey.generate()),
                           lambda: dict(self.published))
        self.published[node_id] = node.keys.curve_public
        return node


SPEC = DbSpec(port=15432, home=b"h" * 32, standbys=1, created_ms=5)
PW = "Zq3-very_secret_generated_pw"


def test_sealed_round_trip_and_nothing_in_clear_in_the_row():
    mesh = Mesh()
    a, b = mesh.node(b"a" * 32), mesh.node(b"b" * 32)
    row = a.sealed_spec(SPEC, Passwords(PW, "old-source-pw-1234"))
    assert row.password == "" and row.restore_password == "" and row.sealed
    stored = encode_message(row) + b"".join(
        encode_message(v) for _, v in mesh.state.scan(DB_SECRET_KEYS.name))
    assert PW.encode() not in stored and b"old-source-pw" not in stored
    assert b.of("shop", row) == Passwords(PW, "old-source-pw-1234")
    assert PW not in repr(b.of("shop", row))
    # resealed under the same key: the key id stays, the box changes
    again = b.sealed_spec(replace(row, created_ms=6), Passwords(PW, PW))
    assert again.key_id == row.key_id and again.sealed != row.sealed
    assert a.of("shop", again) == Passwords(PW, PW)


def test_a_node_without_a_sealed_key_gets_a_clear_error_until_resealed():
    mesh = Mesh()
    a = mesh.node(b"a" * 32)
    row = a.sealed_spec(SPEC, Passwords(PW))
    late = mesh.node(b"z" * 32)  # joined after the database was made
    with pytest.raises(PasswordsUnavailable, match="not sealed to this node yet") as info:
        late.of("shop", row)
    assert PW not in str(info.value) and info.value.code == "unavailable"
    assert late.reseal([row.key_id]) == 0  # it cannot open the key: nothing to seal
    assert a.reseal([row.key_id, b""]) == 1  # a seals it to the new node
    assert late.of("shop", row).password == PW
    assert a.reseal([row.key_id]) == 0
    a.drop(row.key_id)
    assert mesh.state.scan(DB_SECRET_KEYS.name) == []


def test_a_damaged_box_is_an_error_not_a_password():
    mesh = Mesh()
    a = mesh.node(b"a" * 32)
    row = a.sealed_spec(SPEC, Passwords(PW))
    bad = replace(row, sealed=row.sealed[:-1] + bytes([row.sealed[-1] ^ 1]))
    with pytest.raises(PasswordsUnavailable, match="does not open"):
        a.of("shop", bad)


def test_an_old_clear_row_is_read_then_rewritten_sealed():
    mesh = Mesh()
    a, b = mesh.node(b"a" * 32), mesh.node(b"b" * 32)
    old = replace(SPEC, password=PW, restore_password="src-pw-abcdefgh1234")
    assert b.of("shop", old) == Passwords(PW, "src-pw-abcdefgh1234")  # read as it is
    new = a.migrate(old)
    assert new is not None and new.password == "" and new.restore_password == ""
    assert PW.encode() not in encode_message(new)
    assert (new.port, new.home, new.created_ms) == (old.port, old.home, old.created_ms)
    assert b.of("shop", new) == Passwords(PW, "src-pw-abcdefgh1234")
    assert a.migrate(new) is None  # sealed already: nothing to rewrite
    with pytest.raises(PasswordsUnavailable, match="no password stored"):
        a.of("shop", SPEC)  # neither clear nor sealed


@given(st.text(min_size=1, max_size=60), st.text(max_size=60))
def test_passwords_survive_sealing(password, restore):
    mesh = Mesh()
    a = mesh.node(b"a" * 32)
    row = a.sealed_spec(SPEC, Passwords(password, restore))
    a._opened.clear()  # from the box itself, not the cache
    assert a.of("x", row) == Passwords(password, restore)


async def test_a_failing_tool_never_shows_the_password(tmp_path):
    inst = pg.Instance(tmp_path, None)
    with pytest.raises(pg.PgFailed) as info:
        await pg._run(inst, ["/bin/sh", "-c", 'echo "auth $PGPASSWORD"; cat; exit 3'],
                      env={"PGPASSWORD": PW}, stdin=b"ALTER ROLE x PASSWORD 'other-pw-99'",
                      hide=("other-pw-99",))
    assert "exited 3" in str(info.value)
    assert PW not in str(info.value) and "other-pw-99" not in str(info.value)
    assert "auth ********" in str(info.value)
    with trio.fail_after(30):
        out = await pg._run(inst, ["/bin/sh", "-c", 'echo "$PGPASSWORD"'],
                            env={"PGPASSWORD": PW})
    assert out.strip() == PW  # a result is left as it is


@pytest.mark.parametrize("prefix, root, name, expected", [
    ("pgbackrest/archive/shop-1765000000000/", "pgbackrest/archive/", "shop", True),
    ("/pgbackrest/backup/shop-12/", "/pgbackrest/backup/", "shop", True),
    ("pgbackrest/archive/shop2-12/", "pgbackrest/archive/", "shop", False),
    ("pgbackrest/archive/my_shop-12/", "pgbackrest/archive/", "shop", False),
    ("pgbackrest/archive/shop-12x/", "pgbackrest/archive/", "shop", False),
    ("pgbackrest/archive/shop-/", "pgbackrest/archive/", "shop", False),
    ("pgbackrest/archive/shop-١٢/", "pgbackrest/archive/", "shop", False),
    ("pgbackrest/backup/shop-12/", "pgbackrest/archive/", "shop", False),
])
def test_which_listed_directories_are_a_databases_stanzas(prefix, root, name, expected):
    assert is_stanza_of(prefix, root, name) is expected
    assert root in repo_roots() or not expected


def test_a_time_after_a_removed_databases_end_is_refused_clearly():
    backups = [Backup("b1", "full", 100, 200, 1, 1)]
    at = dt.datetime.fromtimestamp(500, dt.UTC)
    with pytest.raises(DbError, match="after the kept backups end") as info:
        check_restore_time(at, backups, 400, end="when shop was removed")
    assert info.value.code == "too_late"
    check_restore_time(dt.datetime.fromtimestamp(300, dt.UTC), backups, 400,
                       end="when shop was removed")


def test_what_db_rm_says():
    kept = rm_text("shop", {"removed": "shop", "bucket": "meshcloud-db",
                            "stanza": "shop-5", "archived": True, "backups": ["a", "b"],
                            "kept": ["shop-5"]})
    assert "removed database shop" in kept
    assert "backups are kept (2 base backups and the WAL archive)" in kept
    assert "meshcloud-db/pgbackrest/{archive,backup}/shop-5/" in kept
    assert "meshcloud db restore shop --at TIME --as NEW" in kept
    assert "meshcloud db rm shop --delete-backups" in kept
    deleted = rm_text("shop", {"removed": "shop", "bucket": "meshcloud-db",
                               "objects_deleted": 17, "deleted": ["shop-5", "shop-9"]})
    assert "17 objects of shop-5, shop-9" in deleted and "kept" not in deleted


def test_a_row_stored_by_the_previous_version_decodes_with_its_clear_password():
    from meshcloud.codec.messages import from_wire, to_wire

    old = replace(SPEC, password=PW, restore_password="src-pw-abcdefgh1234")
    wire = to_wire(old)
    wire[1] = 2  # version 2: no key_id, no sealed
    row = from_wire(wire[:-2], DbSpec)
    assert row.password == PW and row.sealed == b"" and row.key_id == b""
    mesh = Mesh()
    assert mesh.node(b"a" * 32).of("shop", row).password == PW


def test_the_lease_holder_rewrites_an_old_row_sealed_and_others_leave_it():
    from types import SimpleNamespace

    from apps.db.service import DbService
    from apps.db.tables import DATABASES

    mesh = Mesh()
    holder, other = mesh.node(b"a" * 32), mesh.node(b"b" * 32)
    old = replace(SPEC, password=PW)
    mesh.state.put(DATABASES.name, ("shop",), old)
    DbService._seal_round(SimpleNamespace(passwords=other, state=mesh.state),
                          {"shop": old}, {})
    assert mesh.state.get(DATABASES.name, ("shop",)) == old  # not its lease: untouched
    DbService._seal_round(SimpleNamespace(passwords=holder, state=mesh.state),
                          {"shop": old}, {"shop": object()})
    new = mesh.state.get(DATABASES.name, ("shop",))
    assert new.password == "" and new.sealed and other.of("shop", new).password == PW
    # a row changed since the round read it is left to the next round
    newer = replace(old, standbys=2)
    mesh.state.put(DATABASES.name, ("shop",), newer)
    DbService._seal_round(SimpleNamespace(passwords=holder, state=mesh.state),
                          {"shop": old}, {"shop": object()})
    assert mesh.state.get(DATABASES.name, ("shop",)) == newer
