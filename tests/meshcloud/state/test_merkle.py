"""Merkle tree: canonical shape (equal contents ⇒ equal trees), roots equal iff contents
equal, views, and the to-do set."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.state.crdt import LwwRegister
from meshcloud.state.kv import MemoryKv
from meshcloud.state.merkle import EMPTY, EMPTY_HASH, INTERMEDIATE, LEAF, blake, leaf
from meshcloud.state.schema import TableSchema
from meshcloud.state.table import TableCore

SCHEMA = TableSchema("t", partition=(str,), sort=(int,))
# Few partitions so that keys share partitions and deep splits happen.
keys = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 40))
values = st.integers(0, 3)
ops = st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=40)


def apply(ops_list, *, flush_every: int = 0) -> TableCore:
    table = TableCore(SCHEMA, MemoryKv())
    for i, (key, value) in enumerate(ops_list):
        ts = i + 1
        kb = SCHEMA.key_bytes(key)
        if value is None:  # a hard removal (what GC does), exercising leaf pull-up
            data = table.get_bytes(kb)
            if data is not None:
                table.delete_if_equal(kb, blake(data))
        else:
            table.merge([(kb, LwwRegister.write(ts, b"w", value))], now_ms=0)
        if flush_every and i % flush_every == 0:
            table.flush_merkle(3)
    table.flush_merkle(100_000)
    return table


def reference_tree(table: TableCore) -> dict[bytes, bytes]:
    """The canonical tree built from scratch, by definition."""
    items = {}
    for key, data in table.kv.read(lambda txn: list(txn.range("t/e"))):
        items[table.merkle.path(key)] = leaf(key, blake(data))
    nodes: dict[bytes, bytes] = {}

    def build(prefix: bytes) -> bytes:
        under = [p for p in items if p.startswith(prefix)]
        if not under:
            return EMPTY
        if len(under) == 1:
            node = items[under[0]]
        else:
            node = bytes([INTERMEDIATE])
            for child in sorted({p[len(prefix)] for p in under}):
                sub = build(prefix + bytes([child]))
                node += bytes([child]) + blake(sub)
                if sub[0] == LEAF:
                    nodes[prefix + bytes([child])] = sub
        nodes[prefix] = node
        return node

    build(b"")
    return {p: n for p, n in nodes.items() if n != EMPTY}


def stored_tree(table: TableCore) -> dict[bytes, bytes]:
    return {k[1:]: v for k, v in table.kv.read(lambda txn: list(txn.range("t/m")))}


@settings(max_examples=80, deadline=None)
@given(ops, st.integers(0, 4))
def test_incremental_tree_equals_the_canonical_tree(ops_list, flush_every):
    table = apply(ops_list, flush_every=flush_every)
    assert stored_tree(table) == reference_tree(table)
    assert table.merkle.todo_count() == 0


@settings(max_examples=60, deadline=None)
@given(ops, st.randoms(use_true_random=False))
def test_same_contents_in_any_order_give_the_same_tree(ops_list, rnd):
    table = apply(ops_list)
    contents = dict(table.kv.read(lambda txn: list(txn.range("t/e"))))
    items = list(contents.items())
    rnd.shuffle(items)
    other = TableCore(SCHEMA, MemoryKv())
    for key, data in items:
        other.merge_encoded([(key, data)], now_ms=0)
        other.flush_merkle(rnd.randint(0, 3))
    other.flush_merkle(100_000)
    assert stored_tree(other) == stored_tree(table)
    assert other.merkle_root() == table.merkle_root()


@settings(max_examples=80, deadline=None)
@given(ops, ops)
def test_roots_equal_iff_contents_equal(a, b):
    ta, tb = apply(a), apply(b)
    same_contents = (ta.kv.read(lambda t: list(t.range("t/e")))
                     == tb.kv.read(lambda t: list(t.range("t/e"))))
    assert (ta.merkle_root() == tb.merkle_root()) == same_contents


@settings(max_examples=40, deadline=None)
@given(ops, st.binary(max_size=3))
def test_view_is_the_canonical_node_under_any_prefix(ops_list, prefix):
    table = apply(ops_list)
    tree = reference_tree(table)
    view = table.kv.read(lambda txn: table.merkle.view(txn, prefix))
    if prefix in tree:
        assert view == tree[prefix]
    else:
        under = [k for k, _ in table.kv.read(lambda txn: list(txn.range("t/e")))
                 if table.merkle.path(k).startswith(prefix)]
        if len(under) == 1:
            assert view[0] == LEAF and view[33:] == under[0]
        else:
            assert view == EMPTY and not under


def test_empty_table_root_and_to_do_is_applied_later():
    table = TableCore(SCHEMA, MemoryKv())
    assert table.merkle_root() == EMPTY_HASH
    table.merge([(SCHEMA.key_bytes(("a", 1)), LwwRegister.write(1, b"w", 1))], now_ms=0)
    assert table.merkle.todo_count() == 1
    assert table.merkle_root() == EMPTY_HASH  # not yet applied
    assert table.flush_merkle() == 1
    assert table.merkle_root() != EMPTY_HASH
    assert table.merkle.todo_count() == 0


def test_deep_tree_with_removals_stays_canonical():
    """600 keys in one partition force splits two and three levels down; removing
    every other one exercises the pull-up of lone leaves."""
    schema = TableSchema("t", partition=(), sort=(int,))
    table = TableCore(schema, MemoryKv())
    table.merge([(schema.key_bytes((i,)), LwwRegister.write(1, b"w", i)) for i in range(600)],
                now_ms=0)
    table.flush_merkle(10_000)
    depths = {len(p) for p in stored_tree(table)}
    assert max(depths) >= 3
    assert stored_tree(table) == reference_tree(table)
    for i in range(0, 600, 2):
        key = schema.key_bytes((i,))
        assert table.delete_if_equal(key, blake(table.get_bytes(key)))
    table.flush_merkle(10_000)
    assert stored_tree(table) == reference_tree(table)
