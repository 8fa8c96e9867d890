"""Function secrets: sealed to member nodes' keys, opened only by them, resealed to
nodes that join, dropped for revoked ones; values never in names, errors or rows."""

from __future__ import annotations

import nacl.public
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.functions.core import FunctionError
from apps.functions.secrets import FunctionSecrets, SecretsUnavailable, check_updates
from apps.functions.tables import SECRET_KEYS, SECRETS
from meshcloud.codec.messages import encode_message


class FakeState:
    """The replicated tables as one dict (every node sees every write at once)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, object]] = {}

    @staticmethod
    def _key(key) -> tuple:
        return key if isinstance(key, tuple) else (key,)

    def get(self, table, key):
        return self.rows.get(table, {}).get(self._key(key))

    def put(self, table, key, value):
        self.rows.setdefault(table, {})[self._key(key)] = value

    def delete(self, table, key):
        self.rows.get(table, {}).pop(self._key(key), None)

    def scan(self, table, partition=()):
        return sorted((k, v) for k, v in self.rows.get(table, {}).items()
                      if k[:len(partition)] == tuple(partition))


class Mesh:
    def __init__(self) -> None:
        self.state = FakeState()
        self.published: dict[bytes, bytes] = {}
        self.revoked: set[bytes] = set()

    def node(self, node_id: bytes, publish: bool = True) -> FunctionSecrets:
        private = bytes(nacl.public.PrivateKey.generate())
        node = FunctionSecrets(self.state, node_id, private,
                               lambda: {n: k for n, k in self.published.items()
                                        if n not in self.revoked},
                               lambda: set(self.revoked))
        if publish:
            self.published[node_id] = node.curve_public
        return node


def test_sealed_to_members_resealed_to_joiners_dropped_for_revoked():
    mesh = Mesh()
    a, b = mesh.node(b"a" * 32), mesh.node(b"b" * 32)
    assert a.update("f", {"TOKEN": "s3cret-value", "DB": "postgres://x"}, [], 1) == [
        "DB", "TOKEN"]
    assert b.values("f") == {"TOKEN": "s3cret-value", "DB": "postgres://x"}
    row = mesh.state.get(SECRETS.name, "f")
    stored = encode_message(row) + b"".join(
        encode_message(v) for _, v in mesh.state.scan(SECRET_KEYS.name))
    assert b"s3cret-value" not in stored and b"postgres" not in stored
    assert row.names == ("DB", "TOKEN")

    c = mesh.node(b"c" * 32)  # joined after the secrets were set
    with pytest.raises(SecretsUnavailable, match="not sealed to this node yet") as info:
        c.values("f")
    assert "s3cret" not in str(info.value)
    assert c.reseal() == 0  # c cannot open the key: it reseals nothing
    assert b.reseal() == 1  # b can: it seals the key to c
    assert c.values("f")["TOKEN"] == "s3cret-value"
    assert a.reseal() == 0  # nothing left to do

    # c changes one and removes one; a (same key) reads the change
    assert c.update("f", {"TOKEN": "new"}, ["DB"], 2) == ["TOKEN"]
    assert a.values("f") == {"TOKEN": "new"}
    assert mesh.state.get(SECRETS.name, "f").key_id == row.key_id

    mesh.revoked.add(b"c" * 32)
    assert a.reseal() == 1
    with pytest.raises(SecretsUnavailable):
        c.values("f")
    assert a.values("f") == {"TOKEN": "new"}
    a.remove_all("f")
    assert a.values("f") == {} and mesh.state.scan(SECRET_KEYS.name) == []


def test_a_node_without_a_box_cannot_change_existing_secrets():
    mesh = Mesh()
    a = mesh.node(b"a" * 32)
    a.update("f", {"K": "v"}, [], 1)
    late = mesh.node(b"z" * 32)
    with pytest.raises(SecretsUnavailable):
        late.update("f", {"K": "other"}, [], 2)
    assert a.values("f") == {"K": "v"}  # nothing changed


@pytest.mark.parametrize("set_, remove, reason", [
    ({"1BAD": "x"}, [], "bad secret name"),
    ({"A-B": "x"}, [], "bad secret name"),
    ({}, ["no space"], "bad secret name"),
    ({"K": 5}, [], "secret K: a value"),
    ({"K": "a\0b"}, [], "secret K: a value"),
    ({"K": "x" * 5000}, [], "secret K: a value"),
    (["K=V"], [], "secrets are"),
])
def test_bad_updates_are_refused_by_name_only(set_, remove, reason):
    with pytest.raises(FunctionError, match=reason) as info:
        check_updates(set_, remove)
    assert "xxxx" not in str(info.value) and "a\0b" not in str(info.value)


def test_too_many_or_too_large_secrets_change_nothing():
    mesh = Mesh()
    a = mesh.node(b"a" * 32)
    a.update("f", {"K": "v"}, [], 1)
    with pytest.raises(FunctionError, match="at most 64 secrets"):
        a.update("f", {f"K{i}": "v" for i in range(64)}, [], 2)
    with pytest.raises(FunctionError, match="at most 32 KiB"):
        a.update("f", {f"K{i}": "v" * 4000 for i in range(9)}, [], 2)
    assert a.values("f") == {"K": "v"}


names = st.sampled_from(["A", "B", "C", "D"])


@given(st.lists(st.tuples(st.dictionaries(names, st.text(max_size=20).filter(
    lambda t: "\0" not in t), max_size=3), st.lists(names, max_size=2)), max_size=8))
def test_updates_match_a_plain_dict(steps):
    mesh = Mesh()
    a, b = mesh.node(b"a" * 32), mesh.node(b"b" * 32)
    model: dict[str, str] = {}
    for n, (set_, remove) in enumerate(steps):
        writer = (a, b)[n % 2]
        for k in remove:
            model.pop(k, None)
        model.update(set_)
        assert writer.update("f", set_, remove, n) == sorted(model)
        assert (b, a)[n % 2].values("f") == model
