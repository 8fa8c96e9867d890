"""Ed25519 keys for nodes and mesh admins, and the ids derived from them.

* A **node key** identifies one machine; its **node id** is BLAKE2b-256 of the public key.
* The **mesh root key** is the admin key made by ``meshcloud init``; the **mesh id** is
  BLAKE2b-256 of its public key.

Key files hold the 32-byte seed in base64 under a one-line header, are created with mode
0600 (atomically: write a temp file, fsync, rename) and are refused on load if anyone but
the owner can read them. A key never appears in ``repr``, logs or error messages.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing

from meshcloud.errors import DataDirError

NodeId = bytes
"""32 bytes: BLAKE2b-256 of a node's Ed25519 public key."""

_HEADER = "meshcloud-ed25519-seed-v1"


def key_id(public_key: bytes) -> bytes:
    """The 32-byte id of a public key (node id or mesh id)."""
    return hashlib.blake2b(public_key, digest_size=32).digest()


def short_id(ident: bytes) -> str:
    """A readable prefix of an id for logs and tables (12 hex digits)."""
    return ident.hex()[:12]


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


class SigningKey:
    """An Ed25519 private key. The seed is never shown."""

    __slots__ = ("_key", "id", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public: bytes = bytes(self._key.verify_key)
        self.id: bytes = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def seed(self) -> bytes:
        """The private seed: only for writing the key file or an invite token."""
        return bytes(self._key)

    def to_curve25519_private(self) -> bytes:
        """The X25519 private key matching this Ed25519 key (for Noise static keys)."""
        return bytes(self._key.to_curve25519_private_key())

    def __repr__(self) -> str:
        return f"<SigningKey id={short_id(self.id)}>"

    def save(self, path: Path) -> None:
        write_secret(path, f"{_HEADER}\n{base64.b64encode(self.seed()).decode()}\n".encode())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        text = read_secret(path).decode("ascii", "replace").split()
        if len(text) != 2 or text[0] != _HEADER:
            raise DataDirError(f"{path} is not a meshcloud key file")
        try:
            seed = base64.b64decode(text[1], validate=True)
            return cls(seed)
        except (ValueError, TypeError):
            raise DataDirError(f"{path} holds a damaged key") from None


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600, atomically, creating parent dirs 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that others can read or write."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataDirError(f"{path} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DataDirError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):o}; secrets must be 600 "
            f"(run: chmod 600 {path})"
        )
    return path.read_bytes()
