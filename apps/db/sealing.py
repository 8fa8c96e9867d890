"""Database passwords sealed in the replicated state.

A database's generated passwords (its user's, and at a restore the source's) are one
XSalsa20-Poly1305 box under a random data key (``DbSpec.sealed``, ``DbKept.sealed``);
the data key is sealed to every member node's published key, one ``db_secret_keys`` row
per (key id, node), kept by :class:`meshcloud.kit.sealed.SealedKeys` (the mechanism
function secrets use). A node opens the passwords only when it needs them: to run
postgres or pgBackRest, to answer ``db url``, to clone a standby. A row written in clear
by an earlier version is read as it is, and :meth:`DbPasswords.migrate` gives the
sealed row that replaces it.

No I/O: ``state`` is the node's replicated tables, ``random`` the key source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from apps.db.core import DbError
from apps.db.messages import DbSecretKey, DbSpec
from apps.db.tables import DB_SECRET_KEYS
from meshcloud.kit import sealed


class PasswordsUnavailable(DbError):
    code = "unavailable"


@dataclass(frozen=True, slots=True)
class Passwords:
    """What ``sealed`` holds (``repr`` never shows it)."""

    password: str = field(repr=False)
    restore_password: str = field(default="", repr=False)

    def as_bytes(self) -> bytes:
        return json.dumps({"password": self.password,
                           "restore_password": self.restore_password},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Passwords:
        try:
            value = json.loads(data)
            return cls(str(value["password"]), str(value.get("restore_password", "")))
        except (ValueError, KeyError, TypeError):
            raise PasswordsUnavailable("a database's sealed passwords are not readable"
                                       ) from None


class DbPasswords:
    """The databases' passwords as seen from one node."""

    def __init__(self, state: Any, node_id: bytes, curve_private: bytes,
                 sealable: Callable[[], dict[bytes, bytes]],
                 revoked: Callable[[], set[bytes]] = set,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.keys = sealed.SealedKeys(state, DB_SECRET_KEYS.name, _box, node_id,
                                      curve_private, sealable, revoked, random)
        self.random = random
        self._opened: dict[tuple[bytes, bytes], Passwords] = {}

    def open(self, name: str, key_id: bytes, box: bytes, clear: Passwords | None = None
             ) -> Passwords:
        """The passwords of ``name`` from its sealed box (``clear``: an old row's, used
        when it has no box)."""
        if not box:
            if clear is None or not clear.password:
                raise PasswordsUnavailable(f"database {name!r} has no password stored")
            return clear
        found = self._opened.get((key_id, box))
        if found is not None:
            return found
        key = self.keys.open(key_id, key_id)
        if key is None:
            raise PasswordsUnavailable(
                f"{name}'s password is not sealed to this node yet (a node that joined "
                "gets it from another within seconds)")
        data = sealed.decrypt(key, box)
        if data is None:
            raise PasswordsUnavailable(f"{name}'s sealed password does not open with "
                                       "its key")
        found = Passwords.from_bytes(data)
        if len(self._opened) > 256:
            self._opened.clear()
        self._opened[(key_id, box)] = found
        return found

    def of(self, name: str, spec: DbSpec) -> Passwords:
        return self.open(name, spec.key_id, spec.sealed,
                         Passwords(spec.password, spec.restore_password))

    def seal(self, passwords: Passwords, key_id: bytes = b"") -> tuple[bytes, bytes]:
        """(key id, box) of ``passwords``: under ``key_id``'s key when this node opens
        it, else under a new key sealed to every member."""
        key = self.keys.open(key_id, key_id) if key_id else None
        if key is None:
            key_id = self.random(sealed.KEY_ID_BYTES)
            key, _ = self.keys.create(key_id, key_id)
        box = sealed.encrypt(key, passwords.as_bytes(), self.random(sealed.NONCE_BYTES))
        self._opened[(key_id, box)] = passwords
        return key_id, box

    def sealed_spec(self, spec: DbSpec, passwords: Passwords) -> DbSpec:
        """``spec`` with ``passwords`` sealed (under its own key when it has one) and no
        password in clear."""
        key_id, box = self.seal(passwords, spec.key_id)
        return replace(spec, password="", restore_password="", key_id=key_id, sealed=box)

    def migrate(self, spec: DbSpec) -> DbSpec | None:
        """The sealed row that replaces an old row with its passwords in clear (None
        when ``spec`` is sealed already)."""
        if spec.sealed or not (spec.password or spec.restore_password):
            return None
        return self.sealed_spec(spec, Passwords(spec.password, spec.restore_password))

    def reseal(self, key_ids: Iterable[bytes]) -> int:
        """Seal each key this node opens to members that lack it; drop revoked nodes'
        boxes. Returns the rows written or deleted."""
        return sum(self.keys.reseal(k, k) for k in sorted(set(key_ids)) if k)

    def drop(self, key_id: bytes) -> None:
        if key_id:
            self.keys.drop(key_id)


def _box(key_id: bytes, box: bytes) -> DbSecretKey:
    return DbSecretKey(key_id=key_id, box=box)
