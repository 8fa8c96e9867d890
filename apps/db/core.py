"""Pure decisions of the database service: names, placement, ports, configuration and
what this node should do about each database (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
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


ROLES = ("readonly", "readwrite", "admin")


def user_sql(db: str, user: str, role: str, password: str) -> str:
    """The SQL (run in database ``db``) that makes ``user`` with ``role``; the password
    is a generated URL-safe token (checked: no quoting needed)."""
    check_name(user)
    if user == db:
        raise DbError(f"{user!r} is the database's own user", code="conflict")
    if role not in ROLES:
        raise DbError(f"role is one of {', '.join(ROLES)}", code="bad_request")
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", password):
        raise DbError("a generated password is URL-safe", code="bad_request")
    schema = f'GRANT USAGE, CREATE ON SCHEMA public TO "{user}"'
    grants = {
        "readonly": [f'GRANT CONNECT ON DATABASE "{db}" TO "{user}"',
                     f'GRANT pg_read_all_data TO "{user}"'],
        "readwrite": [f'GRANT CONNECT ON DATABASE "{db}" TO "{user}"',
                      f'GRANT pg_read_all_data, pg_write_all_data TO "{user}"', schema],
        "admin": [f'GRANT ALL ON DATABASE "{db}" TO "{user}"',
                  f'GRANT pg_read_all_data, pg_write_all_data TO "{user}"',
                  f'ALTER ROLE "{user}" CREATEROLE', schema],
    }[role]
    return ";\n".join([f'CREATE ROLE "{user}" LOGIN PASSWORD \'{password}\'', *grants]
                      ) + ";"


def check_size(size: int, free: Mapping[bytes, int], copies: int) -> list[bytes]:
    """The nodes with ``size`` bytes of disk free; an error when fewer than ``copies``."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DbError("size is a number of bytes (or 10G, 512M)", code="bad_size")
    fit = sorted(n for n, f in free.items() if f >= size)
    if len(fit) < copies:
        best = max(free.values(), default=0)
        raise DbError(f"no {copies} node(s) with {size / 2**30:.1f} GiB free (the most "
                      f"any live node has: {best / 2**30:.1f} GiB)", code="bad_size")
    return fit


def free_port(taken: Iterable[int]) -> int:
    """The lowest ingress port of the database range no database or exposure uses."""
    used = set(taken)
    for port in range(PORT_BASE, PORT_LIMIT + 1):
        if port not in used:
            return port
    raise DbError("every database port is taken", code="no_port")


def placement(name: str, nodes: Collection[bytes], standbys: int) -> list[bytes]:
    """The database's nodes, best first: the primary's home, then its standbys (distinct
    nodes; fewer when the mesh is smaller)."""
    return rank(sorted(set(nodes)), b"db/" + name.encode())[:1 + standbys]


def group_of(name: str, spec: DbSpec, known: Collection[bytes],
             gone: Collection[bytes] = ()) -> list[bytes]:
    """The nodes that keep a copy of ``name``: the node chosen at creation first, then the
    best ranked other known nodes (dead ones included: a copy does not move because its
    node is down for a while), except the ``gone`` ones (down longer than the service's
    replace delay): their place goes to the next ranked node, which clones a new standby."""
    lost = set(gone)
    if spec.home in lost:
        return placement(name, set(known) - lost, spec.standbys)[:1 + spec.standbys]
    others = placement(name, set(known) - {spec.home} - lost,
                       spec.standbys)[:spec.standbys]
    return [spec.home, *others]


@dataclass(frozen=True, slots=True)
class Local:
    """What this node has of one database."""

    has_data: bool = False
    standby_data: bool = False
    """The data dir is a standby's (standby.signal)."""
    running: bool = False
    term: int = 0
    """The term under which this copy last ran as primary (0: never)."""


INITDB = "initdb"
START_PRIMARY = "start_primary"
PROMOTE = "promote"
CLONE = "clone"
START_STANDBY = "start_standby"
FENCE = "fence"
KEEP = "keep"
WAIT = "wait"
DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    want_lease: bool
    action: str


def decide(me: bytes, name: str, spec: DbSpec, *, known: Collection[bytes],
           alive: Collection[bytes], rows: Mapping[bytes, DbMember], local: Local,
           lease_term: int | None, gone: Collection[bytes] = ()) -> Decision:
    """What this node does about one database this round. The lease (with its term, a
    fencing token) is the only licence to run as primary: without it a running primary
    is stopped at once; a standby asks for it only when no other live primary exists,
    and is promoted only once it holds it (so after the previous holder's lease ran out).
    A copy that was primary under an older term than the current primary's is cloned
    again as a standby: it never accepts a write on its old term."""
    if me not in group_of(name, spec, known, gone):
        return Decision(False, DROP if local.has_data else WAIT)
    others = {n: m for n, m in rows.items() if n != me}
    live_primary = primary_of(name, others, alive)
    top_term = max((m.term for m in rows.values() if m.role == PRIMARY), default=0)
    fresh = not rows or all(m.term == 0 for m in rows.values())
    if lease_term is not None:
        if not local.has_data:
            if fresh and me == spec.home:
                return Decision(True, INITDB)
            return Decision(False, CLONE if live_primary else WAIT)
        if local.standby_data:
            if not may_promote(me, rows):
                return Decision(False, KEEP if local.running else START_STANDBY)
            return Decision(True, PROMOTE if local.running else START_STANDBY)
        if local.term < top_term and (live_primary is not None or
                                      any(m.term > local.term for n, m in others.items()
                                          if m.role == PRIMARY)):
            return Decision(False, CLONE if live_primary else WAIT)  # stale copy
        return Decision(True, KEEP if local.running else START_PRIMARY)
    # no lease
    if local.has_data and not local.standby_data and local.running:
        return Decision(False, FENCE)
    if live_primary is not None:
        if not local.has_data or (not local.standby_data and
                                  local.term <= live_primary[1].term):
            return Decision(False, CLONE)
        return Decision(False, KEEP if local.running else START_STANDBY)
    # no live primary anywhere
    if not local.has_data:
        return Decision(fresh and me == spec.home, WAIT)
    if local.standby_data:
        best = local.running and not _defer(me, rows, alive) and may_promote(me, rows)
        return Decision(best, KEEP if local.running else START_STANDBY)
    return Decision(local.term >= top_term, WAIT)  # the last primary may come back


def may_promote(me: bytes, rows: Mapping[bytes, DbMember]) -> bool:
    """Whether this standby may become primary: the standby a switchover named, or one
    the last primary (highest term) listed as synchronous. Any other may lack commits
    that primary acknowledged (it was asynchronous, or not yet caught up): the database
    then waits for a synchronous copy (the old primary's node, or such a standby) to
    come back rather than lose them."""
    if any(m.handover == me for m in rows.values()):
        return True
    last = max(((m.term, n, m) for n, m in rows.items() if m.role == PRIMARY and m.term),
               default=None, key=lambda t: (t[0], t[1]))
    return last is None or me in last[2].synced


def standby_name(node: bytes) -> str:
    """The ``application_name`` a standby on ``node`` streams under (the primary maps
    ``pg_stat_replication`` rows back to nodes by it)."""
    return "n" + node.hex()[:24]


def _defer(me: bytes, rows: Mapping[bytes, DbMember], alive: Collection[bytes]) -> bool:
    """A standby leaves the lease to another one: the one a switchover named, or a live
    healthy standby that has replayed more WAL (the most advanced is promoted)."""
    named = {m.handover for n, m in rows.items() if m.handover and n in alive}
    named &= {n for n, m in rows.items() if n in alive and m.role == STANDBY}
    if named:
        return me not in named
    mine = rows[me].lsn if me in rows else 0
    return any(m.lsn > mine for n, m in rows.items()
               if n != me and n in alive and m.role == STANDBY and m.healthy)


def excluded_nodes(me: bytes, name: str, spec: DbSpec, *, known: Collection[bytes],
                   rows: Mapping[bytes, DbMember], alive: Collection[bytes],
                   gone: Collection[bytes], holding: bool) -> frozenset[bytes]:
    """The nodes out of the database's group: those the live primary's row names; when
    this node holds the lease, also the group's nodes it counts ``gone`` itself. A node
    that finds itself named drops its copy."""
    live = primary_of(name, rows, alive)
    named = set(live[1].excluded) if live is not None else set()
    if holding:
        named |= set(rows[me].excluded) if me in rows else set()
        named |= (set(gone) - {me}) & set(group_of(name, spec, known, named))
    return frozenset(named)


def primary_of(name: str, members: Mapping[bytes, DbMember], alive: Collection[bytes]
               ) -> tuple[bytes, DbMember] | None:
    """The healthy primary of ``name`` on a node believed alive (highest term first)."""
    found = [(m.term, node, m) for node, m in members.items()
             if m.role == PRIMARY and m.healthy and node in alive and 0 < m.port < 65536]
    if not found:
        return None
    _, node, member = max(found, key=lambda t: (t[0], t[1]))
    return node, member


MAX_PARAMS = 64
MAX_PARAM_VALUE = 1024
OWNED_PARAMS = frozenset({
    "listen_addresses", "port", "unix_socket_directories", "password_encryption",
    "wal_level", "max_wal_senders", "max_replication_slots", "wal_keep_size",
    "hot_standby", "synchronous_commit", "synchronous_standby_names", "logging_collector",
    "wal_log_hints", "archive_mode", "archive_timeout", "primary_conninfo",
    "primary_slot_name", "recovery_target", "recovery_target_lsn", "recovery_target_name",
    "recovery_target_time", "recovery_target_xid", "recovery_target_action",
    "recovery_target_inclusive", "recovery_target_timeline"})
"""Settings the controller relies on (replication, fencing, archiving, where clients
arrive): ``--param`` cannot change them."""
_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_BOOL = {"on", "off", "true", "false", "yes", "no", "1", "0"}
_AMOUNT = re.compile(r"-?\d+(\.\d+)?\s*(B|kB|MB|GB|TB|us|ms|s|min|h|d)?")


def check_params(items: Sequence[str], known: Mapping[str, tuple[str, str, str, str]]
                 ) -> tuple[str, ...]:
    """``--param k=v`` items, checked: ``known`` is the server's settings (name →
    (context, type, min, max), from ``postgres --describe-config``). Refused: unknown
    or internal names, the ones meshcloud owns, files, directories, commands and
    libraries (they run or read things as the server's user), values that do not fit
    the type, duplicates. Returns ``k=v`` items in the order given."""
    if len(items) > MAX_PARAMS:
        raise DbError(f"at most {MAX_PARAMS} --param settings", code="bad_param")
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        name, eq, value = str(item).partition("=")
        name = name.strip().lower()
        value = value.strip()
        if not eq or not _PARAM_NAME.fullmatch(name):
            raise DbError(f"--param {str(item)[:80]!r}: write it NAME=VALUE",
                          code="bad_param")
        if name in seen:
            raise DbError(f"--param {name} is given twice", code="bad_param")
        seen.add(name)
        if name in OWNED_PARAMS or name.endswith(("_file", "_directory", "_command",
                                                  "_library", "_libraries")):
            raise DbError(f"--param {name} is set by meshcloud (replication, archiving, "
                          "files and commands): it cannot be changed", code="bad_param")
        found = known.get(name)
        if found is None or found[0] == "internal":
            raise DbError(f"--param {name}: PostgreSQL has no such setting",
                          code="bad_param")
        if not value or len(value) > MAX_PARAM_VALUE or any(
                c in value for c in "\0\n\r"):
            raise DbError(f"--param {name}: a value of 1 to {MAX_PARAM_VALUE} characters "
                          "on one line", code="bad_param")
        _check_value(name, value, *found[1:])
        out.append(f"{name}={value}")
    return tuple(out)


def _check_value(name: str, value: str, kind: str, low: str, high: str) -> None:
    if kind == "BOOLEAN" and value.lower() not in _BOOL:
        raise DbError(f"--param {name} is on or off, not {value[:40]!r}", code="bad_param")
    if kind in ("INTEGER", "REAL"):
        if not _AMOUNT.fullmatch(value):
            raise DbError(f"--param {name} is a number (with a unit such as MB or s), "
                          f"not {value[:40]!r}", code="bad_param")
        if value.lstrip("-").replace(".", "", 1).isdigit() and low and high and \
                not float(low) <= float(value) <= float(high):
            raise DbError(f"--param {name} is {low} to {high}", code="bad_param")


def conf_text(*, port: int, socket_dir: str, standbys: int, standby_of: str = "",
              archive: str = "", params: Sequence[str] = ()) -> str:
    """The settings meshcloud owns (``meshcloud.conf``, included from postgresql.conf),
    after the user's ``params`` (``k=v``; the last line wins in PostgreSQL, and
    :func:`check_params` refuses ours anyway). ``standby_of`` is a libpq conninfo to the
    primary (a standby's), else empty; ``archive`` the WAL ``archive_command`` (empty:
    no archiving)."""
    lines = [f"{k} = '" + v.replace("'", "''") + "'"
             for k, _, v in (p.partition("=") for p in params)]
    lines += [
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
        "wal_log_hints = on",
        "archive_mode = on" if archive else "archive_mode = off",
    ]
    if archive:
        lines.append("archive_command = '" + archive.replace("'", "''") + "'")
        lines.append("archive_timeout = 60")
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
