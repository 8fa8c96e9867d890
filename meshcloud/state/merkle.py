"""An incremental Merkle tree over a table, fed by a to-do set.

Model: Garage ``src/table/merkle.rs``. Every item of a table has a 33-byte *path*: its
partition (one byte, :func:`~.keys.partition_of` of the partition key) followed by the
BLAKE2b-256 of its stored key. The tree is a radix-256 trie over paths with three kinds
of node, stored under their prefix in the table's ``/m`` tree:

* **empty**: not stored; hashes to ``EMPTY_HASH``;
* **leaf** ``0x01 | value_hash(32) | key``: the only item under this prefix;
* **intermediate** ``0x02 | (child_byte | child_hash(32))*``: two or more items under
  this prefix, children in increasing byte order.

A node's hash is the BLAKE2b-256 of those bytes; a leaf hashes the same at any depth.
The node at prefix ``bytes([p])`` is partition ``p``'s root; the node at ``b""`` is the
table root.

**Canonical shape** (history independence): the node at prefix P is empty if no item's
path starts with P, a leaf if exactly one does, intermediate otherwise. Updates keep this
shape (an intermediate left with one leaf child pulls the leaf up, recursively), so
**equal contents give equal trees, node for node, on every node**, whatever the order of
the writes that led there. Equal roots therefore mean equal contents, up to BLAKE2b
collisions.

Nodes are stored under ``b"n" + prefix`` (LMDB refuses the empty key of the root).

**To-do set** (``/todo``): a write stores the entry and, in the same transaction, puts
``key -> value_hash`` (empty for a removal) in the to-do. :meth:`MerkleTree.flush` applies
to-do items to the tree in a later transaction, removing each only if it is unchanged
(Garage's ``update_item``): a crash between the two loses nothing, and a write racing a
flush is flushed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from meshcloud.errors import RemoteProtocolError
from meshcloud.state.keys import MAX_KEY_BYTES
from meshcloud.state.kv import Kv, Txn

LEAF = 0x01
INTERMEDIATE = 0x02
HASH_BYTES = 32
PATH_BYTES = 1 + HASH_BYTES
CHILD_BYTES = 1 + HASH_BYTES


def blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


EMPTY = b""
EMPTY_HASH = blake(EMPTY)


def node_hash(node: bytes) -> bytes:
    return blake(node)


def leaf(key: bytes, value_hash: bytes) -> bytes:
    return bytes([LEAF]) + value_hash + key


def leaf_key(node: bytes) -> bytes:
    return node[1 + HASH_BYTES :]


def leaf_value_hash(node: bytes) -> bytes:
    return node[1 : 1 + HASH_BYTES]


def children(node: bytes) -> dict[int, bytes]:
    """Child byte to child hash of an intermediate node."""
    return {node[i]: node[i + 1 : i + CHILD_BYTES] for i in range(1, len(node), CHILD_BYTES)}


def child_bytes(node: bytes) -> bytes:
    """The child bytes of an intermediate node, in order (a bytes view: bisectable)."""
    return node[1::CHILD_BYTES]


def _set_child(node: bytes, child: int, hash_: bytes | None) -> bytes:
    """An intermediate node with ``child`` set to ``hash_`` (removed if None)."""
    index = child_bytes(node)
    # position of the first child >= child
    lo, hi = 0, len(index)
    while lo < hi:
        mid = (lo + hi) // 2
        if index[mid] < child:
            lo = mid + 1
        else:
            hi = mid
    at = 1 + lo * CHILD_BYTES
    present = lo < len(index) and index[lo] == child
    end = at + CHILD_BYTES if present else at
    middle = b"" if hash_ is None else bytes([child]) + hash_
    return node[:at] + middle + node[end:]


def check_node(node: bytes) -> bytes:
    """Validate a node received from a peer; raise RemoteProtocolError if malformed."""
    if node == EMPTY:
        return node
    kind = node[0]
    if kind == LEAF:
        if not 1 + HASH_BYTES < len(node) <= 1 + HASH_BYTES + MAX_KEY_BYTES:
            raise RemoteProtocolError("malformed Merkle leaf")
        return node
    if kind == INTERMEDIATE:
        body = len(node) - 1
        if body == 0 or body % CHILD_BYTES or body > 256 * CHILD_BYTES:
            raise RemoteProtocolError("malformed Merkle intermediate node")
        index = child_bytes(node)
        if any(index[i] >= index[i + 1] for i in range(len(index) - 1)):
            raise RemoteProtocolError("Merkle node children out of order")
        return node
    raise RemoteProtocolError(f"unknown Merkle node kind {kind}")


@dataclass(frozen=True, slots=True)
class TreeNames:
    """The kv tree names one table's Merkle tree uses."""

    nodes: str
    todo: str


class MerkleTree:
    """One table's Merkle tree. ``partition_of(key)`` gives a stored key's partition."""

    def __init__(self, kv: Kv, names: TreeNames, partition_of: Callable[[bytes], int]) -> None:
        self.kv = kv
        self.names = names
        self.partition_of = partition_of

    def path(self, key: bytes) -> bytes:
        return bytes([self.partition_of(key)]) + blake(key)

    # --- to-do (called inside the entry's write transaction) ----------------------------

    def mark(self, txn: Txn, key: bytes, value_hash: bytes | None) -> None:
        txn.put(self.names.todo, key, value_hash or b"")

    def todo_count(self) -> int:
        return self.kv.read(lambda txn: txn.count(self.names.todo))

    # --- applying the to-do -------------------------------------------------------------

    def flush(self, limit: int = 1000) -> int:
        """Apply up to ``limit`` to-do items; returns how many were applied."""

        def run(txn: Txn) -> int:
            todo = self.names.todo
            keys = txn.some_keys(todo, limit)
            for key in keys:
                marked = txn.get(todo, key)
                self._apply(txn, key, marked or None)
                txn.delete(todo, key)
            return len(keys)

        # One transaction for tree update and to-do removal: the to-do item read here is
        # the one applied, so "remove only if unchanged" holds within the transaction.
        return self.kv.transact(run)

    def _apply(self, txn: Txn, key: bytes, value_hash: bytes | None) -> None:
        self._update(txn, 0, self.path(key), key, value_hash)

    def _update(self, txn: Txn, depth: int, path: bytes, key: bytes,
                value_hash: bytes | None) -> bytes | None:
        """Set ``key`` to ``value_hash`` (None: remove) in the subtree at ``path[:depth]``.

        Returns the subtree's new hash, or None if nothing changed."""
        prefix = path[:depth]
        tree = self.names.nodes
        node = txn.get(tree, b"n" + prefix)
        if node is None:
            if value_hash is None:
                return None
            new = leaf(key, value_hash)
        elif node[0] == LEAF:
            other_key = leaf_key(node)
            if other_key == key:
                if value_hash == leaf_value_hash(node):
                    return None
                new = EMPTY if value_hash is None else leaf(key, value_hash)
            else:
                if value_hash is None:
                    return None
                # Two items under this prefix now: push the old leaf one level down, then
                # insert ours beside (or, sharing the next byte, below) it.
                other_path = self.path(other_key)
                txn.delete(tree, b"n" + prefix)
                first = self._update(txn, depth + 1, other_path, other_key,
                                     leaf_value_hash(node))
                assert first is not None
                new = bytes([INTERMEDIATE, other_path[depth]]) + first
                second = self._update(txn, depth + 1, path, key, value_hash)
                assert second is not None
                new = _set_child(new, path[depth], second)
        else:
            sub = self._update(txn, depth + 1, path, key, value_hash)
            if sub is None:
                return None
            new = _set_child(node, path[depth], None if sub == EMPTY_HASH else sub)
            remaining = child_bytes(new)
            if not remaining:
                new = EMPTY
            elif len(remaining) == 1:
                only = b"n" + prefix + remaining
                child = txn.get(tree, only)
                if child is not None and child[0] == LEAF:
                    txn.delete(tree, only)
                    new = child  # the last leaf moves up: canonical shape
        if new == EMPTY:
            txn.delete(tree, b"n" + prefix)
            return EMPTY_HASH
        txn.put(tree, b"n" + prefix, new)
        return blake(new)

    # --- reading --------------------------------------------------------------------------

    def view(self, txn: Txn, prefix: bytes) -> bytes:
        """The canonical node for ``prefix``: stored there, or a leaf stored higher up
        whose path starts with ``prefix``, or EMPTY."""
        tree = self.names.nodes
        node = txn.get(tree, b"n" + prefix)
        if node is not None:
            return node
        for depth in range(len(prefix)):
            node = txn.get(tree, b"n" + prefix[:depth])
            if node is None:
                return EMPTY
            if node[0] == LEAF:
                return node if self.path(leaf_key(node)).startswith(prefix) else EMPTY
        return EMPTY

    def view_hash(self, txn: Txn, prefix: bytes) -> bytes:
        return blake(self.view(txn, prefix))

    def root(self) -> bytes:
        """The table's root hash (EMPTY_HASH for an empty table)."""
        return self.kv.read(lambda txn: self.view_hash(txn, b""))

    def partition_root(self, partition: int) -> bytes:
        return self.kv.read(lambda txn: self.view_hash(txn, bytes([partition])))

    def node_count(self) -> int:
        return self.kv.read(lambda txn: txn.count(self.names.nodes))
