"""The shared sealed-keys kit: data keys sealed to member nodes, opened only by them."""

from __future__ import annotations

from dataclasses import dataclass

import nacl.public
from hypothesis import given
from hypothesis import strategies as st

from meshcloud.kit import sealed


@dataclass(frozen=True)
class Box:
    key_id: bytes
    box: bytes


class FakeState:
    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, object]] = {}

    def get(self, table, key):
        return self.rows.get(table, {}).get(key)

    def put(self, table, key, value):
        self.rows.setdefault(table, {})[key] = value

    def delete(self, table, key):
        self.rows.get(table, {}).pop(key, None)

    def scan(self, table, partition=()):
        return sorted((k, v) for k, v in self.rows.get(table, {}).items()
                      if k[:len(partition)] == tuple(partition))


def _private() -> bytes:
    return bytes(nacl.public.PrivateKey.generate())


@given(st.binary(max_size=2000))
def test_seal_and_encrypt_round_trip_and_refuse_the_wrong_key(data):
    mine, other = _private(), _private()
    box = sealed.seal(sealed.curve_public(mine), data)
    assert sealed.unseal(mine, box) == data
    assert sealed.unseal(other, box) is None
    assert sealed.unseal(mine, box[:-1]) is None
    key = bytes(range(32))
    ct = sealed.encrypt(key, data, b"n" * 24)
    assert sealed.decrypt(key, ct) == data
    assert sealed.decrypt(bytes(32), ct) is None
    assert sealed.decrypt(key, ct[:10]) is None


def test_keys_sealed_to_members_resealed_to_joiners_dropped_for_revoked():
    state = FakeState()
    published: dict[bytes, bytes] = {}
    revoked: set[bytes] = set()

    def node(node_id: bytes) -> sealed.SealedKeys[Box]:
        keys = sealed.SealedKeys(state, "t", lambda i, b: Box(i, b), node_id, _private(),
                                 lambda: {n: k for n, k in published.items()
                                          if n not in revoked},
                                 lambda: set(revoked))
        published[node_id] = keys.curve_public
        return keys

    a, b = node(b"a"), node(b"b")
    key, key_id = a.create("item")
    assert len(key) == 32 and len(key_id) == 8
    assert b.open("item", key_id) == key
    assert b.open("item", b"other-id") is None  # an old key id is not current
    assert key not in b"".join(v.box for _, v in state.scan("t"))
    c = node(b"c")
    assert c.open("item", key_id) is None and c.reseal("item", key_id) == 0
    assert b.reseal("item", key_id) == 1 and c.open("item", key_id) == key
    assert a.reseal("item", key_id) == 0
    revoked.add(b"c")
    assert a.reseal("item", key_id) == 1 and c.open("item", key_id) is None
    assert set(a.boxes("item")) == {b"a", b"b"}
    a.drop("item")
    assert state.scan("t") == [] and a.open("item", key_id) is None


class _Key:
    def __init__(self, private: bytes) -> None:
        self.private = private

    def to_curve25519_private(self) -> bytes:
        return self.private


class _Node:
    """Only what :func:`sealed.node_sealing` reads of a node (the unit under test is the
    helper; the services using it run their own tests on real nodes)."""

    def __init__(self, state: _OpeningState, private: bytes) -> None:
        self.node_id = b"me"
        self.state = state
        self.revoked: list[tuple[str, bytes, int]] = []
        self.records = self
        self.datadir = self
        self._key = _Key(private)

    def revocations(self) -> list[tuple[str, bytes, int]]:
        return list(self.revoked)

    def node_key(self) -> _Key:
        return self._key


class _OpeningState(FakeState):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    def open_table(self, schema) -> None:
        from meshcloud.errors import LocalProtocolError

        if schema in self.opened:
            raise LocalProtocolError(f"table {schema} is already open")
        self.opened.append(schema)


def test_node_sealing_leaves_out_revoked_nodes_and_opens_the_keys_table_once():
    state = _OpeningState()
    private = _private()
    node = _Node(state, private)
    for n in (b"a", b"b", b"me"):
        state.put("keys", (n,), b"pub-" + n)
    one = sealed.node_sealing(node, "keys", lambda s: {k[0]: v for k, v in s.scan("keys")})
    two = sealed.node_sealing(node, "keys", lambda s: {})  # the table is open: no error
    assert state.opened == ["keys"] and two.node_id == b"me"
    assert one.node_id == b"me" and one.curve_private == private
    assert one.sealable() == {b"a": b"pub-a", b"b": b"pub-b", b"me": b"pub-me"}
    node.revoked += [("node", b"b", 1), ("invite", b"a", 2)]
    assert one.revoked() == {b"b"}  # an invite's revocation is not a node's
    assert one.sealable() == {b"a": b"pub-a", b"me": b"pub-me"}
    keys = sealed.SealedKeys(state, "t", lambda i, b: Box(i, b), *one)
    assert keys.curve_public == sealed.curve_public(private)
    assert set(keys.members()) == {b"a", b"me"}
