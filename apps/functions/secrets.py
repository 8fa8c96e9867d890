"""Function secrets: encrypted in the replicated state, opened only by member nodes.

Each function with secrets has a random 256-bit data key. The secrets (a JSON object
``{NAME: value}``) are one XSalsa20-Poly1305 box under that key (row of ``fn_secrets``:
the ciphertext, the key id, the names in clear); the data key is sealed (X25519
SealedBox) to every node's key published in ``ingress_keys`` — the same node keys the
mesh's site-certificate keys are sealed to — one row of ``fn_secret_keys`` per (function,
node), kept by :class:`meshcloud.kit.sealed.SealedKeys`. A node that can open the key
seals it to members that joined later and drops the rows of revoked ones
(:meth:`FunctionSecrets.reseal`); setting secrets re-encrypts them
under the same key, so the two writes never undo each other. Values never appear in a
log, an error, ``fn ls`` or the API: only names do.

No I/O: ``state`` is the node's replicated tables, ``random`` the key source.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from apps.functions.core import FunctionError
from apps.functions.messages import FnSecretKey, FnSecrets
from apps.functions.tables import SECRET_KEYS, SECRETS
from meshcloud.kit import sealed

MAX_SECRETS = 64
MAX_VALUE = 4096
MAX_TOTAL = 32 << 10
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SecretsUnavailable(FunctionError):
    code = "unavailable"


def check_updates(set_: Any, remove: Any) -> tuple[dict[str, str], list[str]]:
    """The ``{"set": {K: V}, "remove": [K]}`` of a request, checked (names only in
    errors: a value never appears in a message)."""
    if set_ is None:
        set_ = {}
    if remove is None:
        remove = []
    if not isinstance(set_, dict) or not isinstance(remove, list):
        raise FunctionError('secrets are {"set": {NAME: value}, "remove": [NAME]}')
    for key in [*set_, *remove]:
        if not isinstance(key, str) or not _KEY.match(key):
            raise FunctionError(f"bad secret name {str(key)[:130]!r}: letters, digits, _")
    for key, value in set_.items():
        if not isinstance(value, str) or "\0" in value or len(value.encode()) > MAX_VALUE:
            raise FunctionError(f"secret {key}: a value is text of at most {MAX_VALUE} "
                                "bytes, without NUL")
    return dict(set_), list(remove)


def encrypt(key: bytes, values: dict[str, str], nonce: bytes) -> bytes:
    blob = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    return sealed.encrypt(key, blob, nonce)


def decrypt(key: bytes, ciphertext: bytes) -> dict[str, str]:
    blob = sealed.decrypt(key, ciphertext)
    try:
        values = json.loads(blob) if blob is not None else None
    except ValueError:
        values = None
    if blob is None or values is None:
        raise SecretsUnavailable("the secrets do not open with their key")
    if not isinstance(values, dict):
        raise SecretsUnavailable("the secrets are not a JSON object")
    return {str(k): str(v) for k, v in values.items()}


class FunctionSecrets:
    """Secrets of every function as seen from one node."""

    def __init__(self, state: Any, node_id: bytes, curve_private: bytes,
                 sealable: Callable[[], dict[bytes, bytes]],
                 revoked: Callable[[], set[bytes]] = set,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.state = state
        self.node_id = node_id
        self.keys = sealed.SealedKeys(state, SECRET_KEYS.name, _box, node_id,
                                      curve_private, sealable, revoked, random)
        self.curve_public = self.keys.curve_public
        self.random = random

    def row(self, name: str) -> FnSecrets | None:
        row: FnSecrets | None = self.state.get(SECRETS.name, name)
        return row

    def names(self, name: str) -> list[str]:
        row = self.row(name)
        return list(row.names) if row else []

    def data_key(self, name: str, row: FnSecrets) -> bytes | None:
        """The function's data key if this node can open it (its box is current)."""
        return self.keys.open(name, row.key_id)

    def values(self, name: str) -> dict[str, str]:
        """The function's secrets (empty when it has none); an error when this node
        cannot open them yet."""
        row = self.row(name)
        if row is None:
            return {}
        key = self.data_key(name, row)
        if key is None:
            raise SecretsUnavailable(
                f"{name}'s secrets are not sealed to this node yet (a node that joined "
                "gets them from another within seconds)")
        return decrypt(key, row.ciphertext)

    def update(self, name: str, set_: dict[str, str], remove: list[str], now_ms: int
               ) -> list[str]:
        """Set and remove secrets; returns the names after. The first secret of a
        function makes its data key and seals it to every member."""
        row = self.row(name)
        if row is None:
            values: dict[str, str] = {}
            key, key_id = self.keys.create(name)
        else:
            values = self.values(name)
            found = self.data_key(name, row)
            assert found is not None  # values() opened it
            key, key_id = found, row.key_id
        for k in remove:
            values.pop(k, None)
        values.update(set_)
        if len(values) > MAX_SECRETS:
            raise FunctionError(f"a function has at most {MAX_SECRETS} secrets")
        if sum(len(k) + len(v.encode()) for k, v in values.items()) > MAX_TOTAL:
            raise FunctionError(f"a function's secrets are at most {MAX_TOTAL >> 10} KiB")
        self.state.put(SECRETS.name, name, FnSecrets(
            key_id=key_id, ciphertext=encrypt(key, values, self.random(24)),
            names=tuple(sorted(values)), updated_ms=now_ms))
        return sorted(values)

    def remove_all(self, name: str) -> None:
        if self.row(name) is not None:
            self.state.delete(SECRETS.name, name)
        self.keys.drop(name)

    def functions(self) -> list[str]:
        return sorted(str(k[0]) for k, v in self.state.scan(SECRETS.name)
                      if v is not None and k)

    def reseal(self) -> int:
        """Seal each data key this node can open to members that lack it (or hold an
        old one), and drop the boxes of revoked nodes. Returns the rows written or
        deleted."""
        changed = 0
        for name in self.functions():
            row = self.row(name)
            if row is not None:
                changed += self.keys.reseal(name, row.key_id)
        return changed


def _box(key_id: bytes, box: bytes) -> FnSecretKey:
    return FnSecretKey(key_id=key_id, box=box)
