"""Pure decisions of the database service: names, placement, ports, configuration and
what this node should do about each database (no I/O)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from apps.db.messages import DbMember, DbSpec
from meshcloud.errors import MeshError
from meshcloud.placement import rank

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
"""A database name is also its PostgreSQL user and database name: no quoting needed."""
RESERVED = frozenset({"postgres", "template0", "template1", "meshcloud", "replication",
                      "all", "public"})
PORT_BASE = 15432
PORT_LIMIT = 15999
MAX_STANDBYS = 4
VERSIONS = (15,)
PRIMARY = "primary"
STANDBY = "standby"


class DbError(MeshError):
    """A request about a database that cannot be done (bad name, taken, unknown)."""

    code = "db_error"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DbError(f"bad database name {name!r}: 1-31 of a-z, 0-9, _ starting with a "
                      f"letter", code="bad_name")
    if name in RESERVED:
        raise DbError(f"database name {name!r} is reserved", code="bad_name")
    return name


def check_create(name: str, standbys: int, version: int, taken: Mapping[str, DbSpec]
                 ) -> None:
    check_name(name)
    if name in taken:
        raise DbError(f"database {name!r} already exists", code="conflict")
    if not isinstance(standbys, int) or isinstance(standbys, bool) or \
            not 0 <= standbys <= MAX_STANDBYS:
        raise DbError(f"standbys must be 0..{MAX_STANDBYS}", code="bad_standbys")
    if version not in VERSIONS:
        raise DbError(f"PostgreSQL {version} is not available (have: {VERSIONS})",
                      code="bad_version")


def free_port(taken: Iterable[int]) -> int:
    """The lowest ingress port of the database range no database or exposure uses."""
    used = set(taken)
    for port in range(PORT_BASE, PORT_LIMIT + 1):
        if port not in used:
            return port
    raise DbError("every database port is taken", code="no_port")


def new_password() -> str:
    return secrets.token_urlsafe(24)


def placement(name: str, nodes: Collection[bytes], standbys: int) -> list[bytes]:
    """The database's nodes, best first: the primary's home, then its standbys (distinct
    nodes; fewer when the mesh is smaller)."""
    return rank(sorted(set(nodes)), b"db/" + name.encode())[:1 + standbys]


@dataclass(frozen=True, slots=True)
class Want:
    """What one node should run for one database."""

    name: str
    role: str
    """``primary`` or ``standby``."""
    primary: bytes
    """The node that runs (or should run) the primary."""


def wanted_here(me: bytes, specs: Mapping[str, DbSpec], nodes: Collection[bytes]
                ) -> dict[str, Want]:
    """The databases this node should run and as what. The primary stays on the node
    recorded at creation (``DbSpec.home``): a database's data never moves by accident."""
    out: dict[str, Want] = {}
    for name, spec in specs.items():
        home = spec.home
        if me == home:
            out[name] = Want(name, PRIMARY, home)
            continue
        others = [n for n in placement(name, set(nodes) - {home}, spec.standbys)
                  ][:spec.standbys]
        if me in others:
            out[name] = Want(name, STANDBY, home)
    return out


def primary_of(name: str, members: Mapping[bytes, DbMember], alive: Collection[bytes]
               ) -> tuple[bytes, DbMember] | None:
    """The healthy primary of ``name`` on a node believed alive (highest term first)."""
    found = [(m.term, node, m) for node, m in members.items()
             if m.role == PRIMARY and m.healthy and node in alive and 0 < m.port < 65536]
    if not found:
        return None
    _, node, member = max(found, key=lambda t: (t[0], t[1]))
    return node, member


def conf_text(*, port: int, socket_dir: str, standbys: int, standby_of: str = "") -> str:
    """The settings meshcloud owns (``meshcloud.conf``, included from postgresql.conf).
    ``standby_of`` is a libpq conninfo to the primary (a standby's), else empty."""
    lines = [
        "listen_addresses = '127.0.0.1'",
        f"port = {int(port)}",
        f"unix_socket_directories = '{socket_dir}'",
        "password_encryption = 'scram-sha-256'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "wal_keep_size = '256MB'",
        "hot_standby = on",
        "synchronous_commit = on",
        "logging_collector = off",
    ]
    if standbys > 0:
        lines.append("synchronous_standby_names = 'ANY 1 (*)'")
    else:
        lines.append("synchronous_standby_names = ''")
    if standby_of:
        lines.append("primary_conninfo = '" + standby_of.replace("'", "''") + "'")
    return "\n".join(lines) + "\n"


HBA = """\
# meshcloud: every client arrives on 127.0.0.1 (the node's ingress or a mesh forward)
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
"""
