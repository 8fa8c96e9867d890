"""Secrets kept encrypted in the replicated state and opened only by member nodes.

A service with secrets gives each item (a function's secrets, a database's passwords) a
random 256-bit *data key* and stores the item's secret bytes as one XSalsa20-Poly1305
box under it (:func:`encrypt`). The data key itself is sealed (X25519 SealedBox) to
every member node's published key, one row per (item, node) in a table of the
service's own; :class:`SealedKeys` keeps those rows: it makes a new key sealed to
every member, opens this node's box, seals a key it can open to members that lack it
(nodes that joined later) and drops the boxes of revoked nodes.

No I/O: ``state`` is the node's replicated tables (``get``, ``put``, ``delete``,
``scan``), ``random`` the key source; the caller says which node keys may be sealed to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import nacl.exceptions
import nacl.public
import nacl.secret

from meshcloud.errors import LocalProtocolError

KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 24


class KeyBox(Protocol):
    """A row of a keys table: the data key ``key_id`` sealed to one node."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def box(self) -> bytes: ...


B = TypeVar("B", bound=KeyBox)


def seal(curve_public: bytes, data: bytes) -> bytes:
    """``data`` sealed to an X25519 public key (only its private key opens it)."""
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(curve_public)).encrypt(data))


def unseal(curve_private: bytes, box: bytes) -> bytes | None:
    """What :func:`seal` sealed to this private key's public half; None when it does
    not open (another node's box, damaged bytes)."""
    try:
        return bytes(nacl.public.SealedBox(nacl.public.PrivateKey(curve_private)).decrypt(box))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


def curve_public(curve_private: bytes) -> bytes:
    return bytes(nacl.public.PrivateKey(curve_private).public_key)


def encrypt(key: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """``plaintext`` under a data key (XSalsa20-Poly1305; the nonce is in the output)."""
    return bytes(nacl.secret.SecretBox(key).encrypt(plaintext, nonce))


def decrypt(key: bytes, ciphertext: bytes) -> bytes | None:
    """The plaintext of :func:`encrypt`; None when it does not open with ``key``."""
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(ciphertext))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


class Sealing(NamedTuple):
    """What a service's :class:`SealedKeys` needs of its node, in that order."""

    node_id: bytes
    curve_private: bytes
    sealable: Callable[[], dict[bytes, bytes]]
    revoked: Callable[[], set[bytes]]


def node_sealing(node: Any, keys_table: Any,
                 published: Callable[[Any], dict[bytes, bytes]]) -> Sealing:
    """A node's sealing identity and its view of the members keys may be sealed to.

    ``keys_table`` is the schema of the table where nodes publish their X25519 keys and
    ``published(state)`` reads it (node id → public key); the table is opened here if no
    other service opened it yet. A node revoked in the membership records is neither
    sealable nor kept: ``revoked()`` lists those nodes."""
    try:
        node.state.open_table(keys_table)
    except LocalProtocolError:
        pass  # the service that publishes the keys opened it

    def revoked() -> set[bytes]:
        return {subject for kind, subject, _ in node.records.revocations() if kind == "node"}

    def sealable() -> dict[bytes, bytes]:
        gone = revoked()
        return {n: k for n, k in published(node.state).items() if n not in gone}

    return Sealing(node.node_id, node.datadir.node_key().to_curve25519_private(),
                   sealable, revoked)


class SealedKeys(Generic[B]):
    """The data keys of one service's items as seen from one node.

    ``table`` is keyed (item, node id); ``make(key_id, box)`` builds its row."""

    def __init__(self, state: Any, table: str, make: Callable[[bytes, bytes], B],
                 node_id: bytes, curve_private: bytes,
                 sealable: Callable[[], dict[bytes, bytes]],
                 revoked: Callable[[], set[bytes]] = set,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.state = state
        self.table = table
        self.make = make
        self.node_id = node_id
        self.curve_private = curve_private
        self.curve_public = curve_public(curve_private)
        self.sealable = sealable
        """Node id → X25519 public key of every member a key may be sealed to."""
        self.revoked = revoked
        """Nodes whose boxes are dropped (a key they opened before stays known to them:
        set the secrets anew to rotate what they held)."""
        self.random = random

    def members(self) -> dict[bytes, bytes]:
        """The nodes keys are sealed to: the published ones and this node, less the
        revoked."""
        revoked = self.revoked()
        return {n: k for n, k in {**self.sealable(), self.node_id: self.curve_public
                                  }.items() if n not in revoked}

    def boxes(self, item: Hashable) -> dict[bytes, B]:
        return {k[1]: v for k, v in self.state.scan(self.table, (item,))
                if v is not None and len(k) == 2 and isinstance(k[1], bytes)}

    def open(self, item: Hashable, key_id: bytes) -> bytes | None:
        """The item's data key ``key_id`` if this node holds a current box of it."""
        box: B | None = self.state.get(self.table, (item, self.node_id))
        if box is None or box.key_id != key_id:
            return None
        key = unseal(self.curve_private, box.box)
        return key if key is not None and len(key) == KEY_BYTES else None

    def create(self, item: Hashable, key_id: bytes = b"") -> tuple[bytes, bytes]:
        """A new data key for ``item`` sealed to every member: (key, key id). The key id
        is random unless given (an item named by its key id)."""
        key, key_id = self.random(KEY_BYTES), key_id or self.random(KEY_ID_BYTES)
        for node, public in sorted(self.members().items()):
            self.state.put(self.table, (item, node), self.make(key_id, seal(public, key)))
        return key, key_id

    def reseal(self, item: Hashable, key_id: bytes) -> int:
        """Seal ``item``'s key to members that lack it (or hold an old one) and drop the
        boxes of revoked nodes, when this node can open the key. Returns the rows
        written or deleted."""
        key = self.open(item, key_id)
        if key is None:
            return 0
        changed = 0
        revoked = self.revoked()
        boxes = self.boxes(item)
        for node, public in sorted(self.members().items()):
            box = boxes.get(node)
            if box is None or box.key_id != key_id:
                self.state.put(self.table, (item, node), self.make(key_id, seal(public, key)))
                changed += 1
        for node in sorted(set(boxes) & revoked):
            self.state.delete(self.table, (item, node))
            changed += 1
        return changed

    def drop(self, item: Hashable) -> None:
        """Every box of ``item`` (its secrets are gone)."""
        for node in self.boxes(item):
            self.state.delete(self.table, (item, node))
