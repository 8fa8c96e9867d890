"""The one append-only table of message tag ranges and protocol names.

Every wire message carries an integer tag (see :mod:`meshcloud.codec.messages`). Each
package owns a block of 100 tags below; inside its block a package numbers its messages
in its own ``messages.py``, and those numbers only ever grow: a tag once used is never
reused for another meaning, even after the message is retired. A test checks that no two
registered messages share a tag.

Stream protocol names carry their version (``/meshcloud/gossip/1``): a peer speaking a
newer version opens a new name, and both can be served side by side.
"""

from __future__ import annotations

from enum import IntEnum


class TagBlock(IntEnum):
    """First tag of each package's block. Append new blocks at the end, never renumber."""

    CORE = 0  # meshcloud: identity, join, agent control
    TRANSPORT = 100  # meshcloud.transport: handshake payloads
    DHT = 200
    GOSSIP = 300
    STATE = 400  # meshcloud.state: CRDT table sync, anti-entropy, GC
    PLACEMENT = 500  # claims, leases, fencing
    BLOBSTORE = 600
    APPS = 700
    VNET = 800
    SIM = 900  # simulator-only control messages, never sent by real nodes


BLOCK_SIZE = 100


def block_of(tag: int) -> TagBlock:
    """The block a tag belongs to (used in error messages and the uniqueness test)."""
    return TagBlock(tag - tag % BLOCK_SIZE)
