"""Stored rows of the database service (tags ``APPS + 90`` … ``APPS + 99``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

DB_FORWARD_PROTOCOL = "/meshcloud/db-forward/1"
"""One stream = one client connection to the database's primary on the serving node
(``ForwardOpen(workload=NAME, endpoint="pg", index=0)``; the target checks that it runs
that database's primary itself)."""


@message(TagBlock.APPS + 90)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbSpec:
    """A database the user asked for. Key in ``databases``: its name."""

    port: int
    """The TCP port every node's ingress listens on for it."""
    password: str
    """The generated password of the user NAME (never logged, never listed)."""
    home: bytes
    """The node chosen at creation to run the primary."""
    standbys: int = 0
    version: int = 15
    created_ms: int = 0


@message(TagBlock.APPS + 91)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbMember:
    """One node's copy of a database, written only by that node.

    Key in ``db_members``: (name, node id)."""

    role: str
    """``primary``, ``standby`` or ``stopped``."""
    port: int
    """The postgres port on that node's 127.0.0.1 (0 when not running)."""
    healthy: bool
    term: int = 0
    updated_ms: int = 0
