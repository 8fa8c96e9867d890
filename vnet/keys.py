"""This node's tunnel key: one X25519 key per node, in ``DATA_DIR/vnet/tunnel.key``
(0600, raw 32 bytes), made on first use. Only the public half leaves the node (in its
member rows); the private half is never logged (see :class:`vnet.plane.PlaneConfig`)."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.public import PrivateKey

from meshcloud.errors import DataDirError


def load_or_create(path: Path) -> tuple[bytes, bytes]:
    """(private, public) key bytes, creating the key file (0600) when absent."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise DataDirError(f"{path} is readable by others; chmod 600 it")
        raw = path.read_bytes()
        if len(raw) != 32:
            raise DataDirError(f"{path} is not a 32-byte X25519 key")
        key = PrivateKey(raw)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = PrivateKey.generate()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(key))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return bytes(key), bytes(key.public_key)
