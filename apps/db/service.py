"""The database service of a node: the controller that runs this node's PostgreSQL
instances (primary or standby), the per-database TCP port every node listens on, and the
mesh forward that carries a client to the node running the primary."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.db import pg
from apps.db.backup import BUCKET, check_restore_time, parse_time, stanza
from apps.db.core import (
    CLONE,
    DROP,
    FENCE,
    INITDB,
    PRIMARY,
    PROMOTE,
    STANDBY,
    START_PRIMARY,
    START_STANDBY,
    DbError,
    Local,
    check_create,
    check_params,
    check_size,
    conf_text,
    decide,
    excluded_nodes,
    free_port,
    placement,
    primary_of,
    standby_name,
    user_sql,
)
from apps.db.messages import (
    DB_CALL_PROTOCOL,
    DB_FORWARD_PROTOCOL,
    DbBackups,
    DbCall,
    DbCallReply,
    DbKept,
    DbMember,
    DbSpec,
)
from apps.db.repo import Repo, backups_of
from apps.db.sealing import DbPasswords, Passwords
from apps.db.tables import (
    DATABASES,
    DB_BACKUPS,
    DB_KEPT,
    DB_MEMBERS,
    DB_SECRET_KEYS,
    all_databases,
    all_kept,
    all_members,
)
from apps.ingress.forward import (
    connect_upstream,
    open_forward,
    serve_forward,
    splice_upstream,
)
from apps.ingress.messages import ForwardOpen
from apps.ingress.ports import ephemeral_port
from apps.leases import LEASE_DURATION, RENEW_EVERY
from apps.workloads.leasing import LeaseService
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import ConfigError, MeshError, NotFoundError
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

TICK = 1.0
"""Seconds between controller rounds."""
IDLE_RECHECK = 30.0
"""A node with no database, no copy and no kept backup key to look after runs no rounds:
it sleeps until a row of ``databases``, ``db_members`` or ``db_kept`` changes, and looks
again at least this often anyway (the same for its client listeners)."""
OPEN_TIMEOUT = 5.0
ENDPOINT = "pg"
RO_ENDPOINT = "pg-ro"
HANDOVER_TIMEOUT = 120.0
REPLACE_AFTER = 300.0
"""Seconds a node is down before its database copies are remade on another node."""
LOCAL_REPLACE_AFTER = 30.0
REPLACE_AFTER_ENV = "MESHCLOUD_DB_REPLACE_AFTER"
"""Environment variable of ``meshcloud up`` that sets the replace delay (seconds), for
tests that would otherwise wait the profile's delay out."""
DB_LEASE_PROTOCOL = "/meshcloud/db-lease/1"
LOCAL_LEASE = 6.0
LOCAL_RENEW = 1.0
"""Lease timing under ``--profile local`` (as the workloads': one machine, fast failover)."""


def replace_after(local: bool) -> float:
    """Seconds a node is down before its copies are remade elsewhere: the profile's delay,
    or ``MESHCLOUD_DB_REPLACE_AFTER`` when set (a positive number, else one clear error)."""
    raw = os.environ.get(REPLACE_AFTER_ENV, "").strip()
    if not raw:
        return LOCAL_REPLACE_AFTER if local else REPLACE_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e9:
        raise ConfigError(f"{REPLACE_AFTER_ENV}: {raw!r} is not a positive number of seconds")
    return value


class DbService(ServiceBase):
    name = "db"
    events = ("db.created", "db.removed", "db.backup", "db.restored")

    def __init__(self, node: NodeContext, blobs: Any = None) -> None:
        from apps.runtimes.homes import default_homes, ensure_root_dir
        from apps.runtimes.users import UidAllocator, can_switch_user

        self.node = node
        self.state = node.state
        node.state.open_table(DATABASES)
        node.state.open_table(DB_MEMBERS)
        node.state.open_table(DB_BACKUPS)
        node.state.open_table(DB_SECRET_KEYS)
        node.state.open_table(DB_KEPT)
        self.passwords = _passwords_of(node)
        data_dir = Path(node.datadir.path)
        self.switch_users = can_switch_user()
        self.root = default_homes(data_dir) / "db" if self.switch_users else data_dir / "db"
        if self.switch_users:
            ensure_root_dir(self.root)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
        self.uids = UidAllocator(data_dir)
        self.ports_file = data_dir / "db-ports.json"
        self.local: dict[str, tuple[str, int, bool]] = {}
        self.idle_waits = 0
        """Rounds after which the controller found nothing to do and waited for a row."""
        """name → (role, postgres port, healthy) of the instances running here."""
        self.errors: dict[str, str] = {}
        self.listeners: dict[int, trio.CancelScope] = {}
        self.forwarded = 0
        self.refused = 0
        self.sync_seen: dict[str, int] = {}
        local = node.config.profile == "local"
        self.lease_duration = LOCAL_LEASE if local else LEASE_DURATION
        self.leases = LeaseService(node.node_id, node.transport, self.known_nodes,
                                   duration=LOCAL_LEASE if local else LEASE_DURATION,
                                   renew_every=LOCAL_RENEW if local else RENEW_EVERY,
                                   protocol=DB_LEASE_PROTOCOL)
        self.repo = Repo(self, blobs)
        self.nursery: trio.Nursery | None = None
        self.handing: set[str] = set()
        """Databases this node's primary is handing over (switchover): left alone."""
        self.down_since: dict[bytes, float] = {}
        self.replace_after = replace_after(local)

    def tables(self) -> tuple[Any, ...]:
        return (DATABASES, DB_MEMBERS, DB_BACKUPS, DB_SECRET_KEYS, DB_KEPT)

    def pw(self, name: str, spec: DbSpec) -> Passwords:
        """``name``'s passwords, opened here (an error when they are not sealed to this
        node yet)."""
        return self.passwords.of(name, spec)

    # --- requests (API) --------------------------------------------------------------------

    def create(self, name: str, *, standbys: int = 0, version: int = 15,
               port: int | None = None, restore: DbSpec | None = None,
               home: bytes | None = None, size: int | str | None = None,
               params: Sequence[str] = (), restore_password: str = "") -> DbSpec:
        from apps.ingress.tables import exposures

        specs = all_databases(self.state)
        check_create(name, standbys, version, specs)
        if not isinstance(params, (list, tuple)) or not all(isinstance(p, str)
                                                            for p in params):
            raise DbError("params is a list of NAME=VALUE", code="bad_param")
        checked: tuple[str, ...] = ()
        if params:
            known = pg.describe_config()
            if not known:
                raise DbError("this node has no PostgreSQL to check --param against: run "
                              "the command on a node that has it", code="unavailable")
            checked = check_params(params, known)
        taken = {s.port for s in specs.values()} | set(exposures(self.state))
        taken |= {s.ro_port for s in specs.values() if s.ro_port}
        if port is None:
            port = free_port(taken)
        elif not 1024 <= port < 65536 or port in taken:
            raise DbError(f"port {port} is taken or out of range", code="conflict")
        ro_port = free_port(taken | {port}) if standbys > 0 else 0
        nodes = self.heavy_capable(self.alive_nodes())
        if len(nodes) < 1 + standbys:
            raise DbError(f"{1 + standbys} nodes needed, {len(nodes)} alive",
                          code="no_nodes")
        size_bytes = 0
        if size is not None:
            from apps.workloads.spec import parse_size

            try:
                size_bytes = parse_size(size, "size")
            except ValueError as exc:
                raise DbError(str(exc), code="bad_size") from None
            nodes = set(check_size(size_bytes, self._free_disk(nodes), 1 + standbys))
        if home is None or home not in nodes:
            home = placement(name, nodes, 0)[0]
        spec = DbSpec(port=port, home=home, standbys=standbys,
                      version=version, created_ms=self.node.clock.wall_ms(), ro_port=ro_port,
                      size=size_bytes, params=checked)
        if restore is not None:
            spec = replace(spec, restore_from=restore.restore_from,
                           restore_at=restore.restore_at, restore_user=restore.restore_user)
        spec = self.passwords.sealed_spec(spec, Passwords(
            secrets.token_urlsafe(24), restore_password if restore is not None else ""))
        self.state.put(DATABASES.name, (name,), spec)
        self.node.events.emit("db.created", name=name, port=port)
        return spec

    async def remove(self, name: str, delete_backups: bool = False) -> dict[str, Any]:
        """Stop ``name`` everywhere and delete its data. Its backups are kept (a
        ``db_kept`` row says where, with what a restore needs) unless ``delete_backups``:
        then, once no node runs it any more, every object of its stanzas (each
        incarnation's, and those kept from earlier removals of the same name) is deleted
        from the bucket. ``delete_backups`` on a removed name deletes its kept backups."""
        spec = all_databases(self.state).get(name)
        kept = {st: k for st, k in all_kept(self.state).items() if k.name == name}
        if spec is None and not kept:
            raise NotFoundError(f"no database {name!r}")
        if spec is None and not delete_backups:
            raise NotFoundError(f"no database {name!r} (removed; its backups are kept: "
                                f"`meshcloud db rm {name} --delete-backups` deletes them)")
        out: dict[str, Any] = {"removed": name, "bucket": BUCKET}
        if spec is not None:
            st = stanza(name, spec.created_ms)
            archived = False
            row = self.state.get(DB_BACKUPS.name, (name,))
            if not delete_backups and backups_of(row, st):
                try:  # the WAL up to now into the repository (a restore reaches it)
                    await self.call(name, "check", {}, timeout=90)
                    archived = True
                except (MeshError, OSError, trio.TooSlowError) as exc:
                    log.info("database %s: no archive check before the removal: %s", name,
                             exc)
            sealed_row = self.passwords.migrate(spec) or spec
            kept[st] = DbKept(name=name, created_ms=spec.created_ms,
                              removed_ms=self.node.clock.wall_ms(), version=spec.version,
                              standbys=spec.standbys, params=spec.params,
                              key_id=sealed_row.key_id, sealed=sealed_row.sealed,
                              backups=row.backups if row is not None and row.stanza == st
                              else "[]")
            # first the kept row: a removal cut short still knows the backups are there
            self.state.put(DB_KEPT.name, (st,), kept[st])
            self.state.delete(DATABASES.name, (name,))
            if row is not None:
                self.state.delete(DB_BACKUPS.name, (name,))
            self.node.events.emit("db.removed", name=name)
            out.update(stanza=st, archived=archived,
                       backups=[b["label"] for b in json.loads(kept[st].backups)])
        if not delete_backups:
            out["kept"] = sorted(kept)
            return out
        await self._wait_stopped(name)
        out["objects_deleted"] = await self.repo.delete_backups(name)
        for st, k in sorted(kept.items()):
            self.state.delete(DB_KEPT.name, (st,))
            self.passwords.drop(k.key_id)
        out["deleted"] = sorted(kept)
        return out

    async def _wait_stopped(self, name: str, timeout: float = 120.0) -> None:
        """Until no live node reports a copy of ``name`` (each drops its copy, and its
        row, on the round after the spec is gone): a primary still running could
        archive WAL into the stanza being deleted."""
        with trio.move_on_after(timeout):
            while True:
                alive = self.alive_nodes()
                running = [n for n in all_members(self.state).get(name, {}) if n in alive]
                if not running and name not in self.local:
                    return
                await trio.sleep(0.5)
        raise DbError(f"database {name!r} is removed but still running on a node: its "
                      f"backups are kept (run `meshcloud db rm {name} --delete-backups` "
                      f"again in a minute)", code="unavailable")

    def kept(self) -> list[dict[str, Any]]:
        """The removed databases whose backups are kept (names, never passwords)."""
        return [{"name": k.name, "stanza": st, "bucket": BUCKET,
                 "created_ms": k.created_ms, "removed_ms": k.removed_ms,
                 "backups": json.loads(k.backups)}
                for st, k in sorted(all_kept(self.state).items())]

    def spec(self, name: str) -> DbSpec:
        spec = all_databases(self.state).get(name)
        if spec is None:
            raise NotFoundError(f"no database {name!r}")
        return spec

    def url(self, name: str, read_only: bool = False) -> str:
        spec = self.spec(name)
        port = spec.port
        if read_only:
            if not spec.ro_port:
                raise DbError(f"database {name!r} has no standbys, so no read-only port",
                              code="bad_request")
            port = spec.ro_port
        password = self.pw(name, spec).password
        return f"postgresql://{name}:{password}@{self.bind_host()}:{port}/{name}"

    async def restore(self, name: str, at: str, as_name: str | None = None
                      ) -> dict[str, Any]:
        """Point-in-time restore of ``name`` to ``at``: into a new database ``as_name``, or
        replacing ``name`` (a new incarnation under the same name, port and password).
        A removed database whose backups were kept restores into a new one (``as_name``).
        The target is checked against the repository first: nothing changes when it
        cannot be restored."""
        target = parse_time(at)
        spec = all_databases(self.state).get(name)
        if spec is None:
            return await self._restore_kept(name, target, as_name)
        if as_name is not None:
            check_create(as_name, spec.standbys, spec.version, all_databases(self.state))
        old = self.pw(name, spec)  # opened here, or an error before anything changes
        st = stanza(name, spec.created_ms)
        try:  # the WAL up to now into the repository (when the primary is up)
            await self.call(name, "check", {}, timeout=300)
        except (MeshError, OSError, trio.TooSlowError) as exc:
            log.info("database %s: no archive check before the restore: %s", name, exc)
        backups = await self.repo.info(st)
        listed = backups_of(self.state.get(DB_BACKUPS.name, (name,)), st)
        if len(listed) > len(backups):
            # the primary listed a backup this node's read of the repository does not
            # show yet (its objects written moments ago through another node)
            log.info("database %s: the repository read here lists %d backups, the "
                     "primary's row %d: using the row", name, len(backups), len(listed))
            backups = listed
        check_restore_time(target, backups, self.node.clock.wall_ms() / 1000)
        carrier = replace(spec, restore_from=st, restore_at=target.isoformat(),
                          restore_user=name)
        if as_name is not None:
            new = self.create(as_name, standbys=spec.standbys, version=spec.version,
                              restore=carrier, params=spec.params,
                              restore_password=old.password)
            return {"name": as_name, "port": new.port, "from": st,
                    "at": carrier.restore_at}
        found = self._primary_node(name)
        home = found[0] if found is not None else spec.home
        created = max(self.node.clock.wall_ms(), spec.created_ms + 1)
        row = self.passwords.sealed_spec(replace(carrier, home=home, created_ms=created),
                                         Passwords(old.password, old.password))
        self.state.put(DATABASES.name, (name,), row)
        return {"name": name, "port": spec.port, "from": st, "at": carrier.restore_at}

    async def _restore_kept(self, name: str, target: Any, as_name: str | None
                            ) -> dict[str, Any]:
        """A restore from the kept backups of a removed database ``name`` (the latest
        incarnation created before ``target``) into the new database ``as_name``."""
        kept = sorted((k for k in all_kept(self.state).values() if k.name == name),
                      key=lambda k: k.created_ms, reverse=True)
        if not kept:
            raise NotFoundError(f"no database {name!r} (and no kept backups of one)")
        if as_name is None:
            raise DbError(f"database {name!r} was removed: restore its kept backups into "
                          f"a new database (--as NEW)", code="bad_request")
        ts = target.timestamp()
        source = next((k for k in kept if k.created_ms / 1000 <= ts), kept[-1])
        check_create(as_name, source.standbys, source.version, all_databases(self.state))
        old = self.passwords.open(name, source.key_id, source.sealed)
        st = stanza(name, source.created_ms)
        backups = await self.repo.info(st)
        listed = backups_of(DbBackups(stanza=st, backups=source.backups), st)
        if len(listed) > len(backups):
            backups = listed
        check_restore_time(target, backups, source.removed_ms / 1000,
                           end=f"when {name} was removed")
        carrier = DbSpec(port=0, home=b"", restore_from=st,
                         restore_at=target.isoformat(), restore_user=name)
        new = self.create(as_name, standbys=source.standbys, version=source.version,
                          restore=carrier, params=source.params,
                          restore_password=old.password)
        return {"name": as_name, "port": new.port, "from": st, "at": carrier.restore_at}

    async def add_user(self, name: str, user: str, role: str = "readwrite"
                       ) -> dict[str, Any]:
        """A new login role on ``name`` with a generated password (returned once, stored
        nowhere but as PostgreSQL's SCRAM verifier)."""
        password = secrets.token_urlsafe(24)
        user_sql(name, user, role, password)  # bad input fails here, before any call
        spec = self.spec(name)
        await self.call(name, "user", {"user": user, "role": role, "password": password},
                        timeout=60)
        host = self.bind_host()
        return {"user": user, "role": role, "password": password,
                "url": f"postgresql://{user}:{password}@{host}:{spec.port}/{name}"}

    async def switchover(self, name: str, to: str = "") -> dict[str, Any]:
        return await self.call(name, "switchover", {"to": to}, timeout=180)

    async def backup(self, name: str, kind: str = "full") -> dict[str, Any]:
        return await self.call(name, "backup", {"type": kind})

    def backups(self, name: str) -> dict[str, Any]:
        spec = self.spec(name)
        row = self.state.get(DB_BACKUPS.name, (name,))
        st = stanza(name, spec.created_ms)
        listed = json.loads(row.backups) if row is not None and row.stanza == st else []
        return {"name": name, "stanza": st, "backups": listed,
                "restored_from": spec.restore_from, "restored_at": spec.restore_at}

    async def call(self, name: str, op: str, args: dict[str, str], *,
                   timeout: float = 3600.0) -> dict[str, Any]:
        """Ask the node running ``name``'s primary to do ``op`` (backup, check,
        switchover) and wait for its answer."""
        spec = self.spec(name)
        found = self._primary_node(name)
        if found is None:
            raise DbError(f"database {name!r} has no live primary right now",
                          code="unavailable")
        node = found[0]
        msg = DbCall(name=name, op=op, args=args, incarnation=spec.created_ms)
        if node == self.node.node_id:
            reply = await self._handle_call(msg)
        else:
            stream = await self.node.transport.open_stream(node, DB_CALL_PROTOCOL)
            try:
                with trio.fail_after(timeout):
                    await stream.send(encode_message(msg))
                    reply = decode_message(await stream.receive(), DbCallReply,
                                           max_size=256 * 1024)
            finally:
                with trio.move_on_after(1):
                    await stream.close()
        if not reply.ok:
            raise DbError(reply.message or reply.code, code=reply.code or "db_error")
        result: dict[str, Any] = json.loads(reply.result)
        return result

    async def _serve_call(self, stream: Any) -> None:
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                msg = decode_message(await stream.receive(), DbCall, max_size=64 * 1024)
        except (MeshError, trio.TooSlowError, trio.EndOfChannel,
                trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.move_on_after(1):
                await stream.abort("bad database call")
            return
        reply = await self._handle_call(msg)
        with trio.move_on_after(10):
            await stream.send(encode_message(reply))
            await stream.close()

    async def _handle_call(self, msg: DbCall) -> DbCallReply:
        spec = all_databases(self.state).get(msg.name)
        local = self.local.get(msg.name)
        lease = self.leases.leases().get(msg.name)
        if spec is None or spec.created_ms != msg.incarnation or local is None or \
                local[0] != PRIMARY or not local[2] or lease is None:
            return DbCallReply(ok=False, code="not_primary",
                               message=f"this node does not run {msg.name}'s primary")
        inst = self.instance(msg.name)
        port = local[1]
        try:
            if msg.op == "backup":
                result = await self.repo.backup(msg.name, spec, inst, port,
                                                msg.args.get("type", "full"))
                self.node.events.emit("db.backup", name=msg.name,
                                      type=result.get("type", ""))
            elif msg.op == "check":
                await self.repo.check(msg.name, spec, inst, port)
                result = {}
            elif msg.op == "user":
                user, role = msg.args.get("user", ""), msg.args.get("role", "")
                new_pw = msg.args.get("password", "")
                sql = user_sql(msg.name, user, role, new_pw)
                password = self.pw(msg.name, spec).password
                exists = await pg.sql(inst, port, msg.name, password,
                                      f"SELECT count(*) FROM pg_roles WHERE rolname = "
                                      f"'{user}'")
                if exists.strip() != "0":
                    raise DbError(f"user {user!r} already exists in {msg.name}",
                                  code="conflict")
                await pg.sql(inst, port, msg.name, password, sql, database=msg.name,
                             hide=(new_pw,))
                result = {"user": user, "role": role}
            elif msg.op == "switchover":
                result = await self._switchover(msg.name, spec, inst, port,
                                                msg.args.get("to", ""))
            else:
                return DbCallReply(ok=False, code="bad_request",
                                   message=f"unknown operation {msg.op!r}")
        except MeshError as exc:
            return DbCallReply(ok=False, code=exc.code, message=str(exc))
        except (pg.PgFailed, OSError, trio.TooSlowError) as exc:
            return DbCallReply(ok=False, code="failed", message=str(exc)[-1500:])
        return DbCallReply(ok=True, result=json.dumps(result))

    def overview(self) -> list[dict[str, Any]]:
        alive = self.alive_nodes()
        out = []
        for name, spec in sorted(all_databases(self.state).items()):
            rows = self._rows(name)
            primary = primary_of(name, rows, alive)
            out.append({
                "name": name, "port": spec.port, "ro_port": spec.ro_port,
                "standbys": spec.standbys,
                "version": spec.version, "home": spec.home.hex(),
                "primary": primary[0].hex() if primary else None,
                "members": [{"node": n.hex(), "role": m.role, "healthy": m.healthy,
                             "term": m.term, "alive": n in alive, "lsn": m.lsn,
                             "port": m.port,
                             "synchronous": primary is not None and n in primary[1].synced,
                             "lag_bytes": (max(0, primary[1].lsn - m.lsn)
                                           if primary and m.role == STANDBY and m.lsn
                                           else None)}
                            for n, m in sorted(rows.items())],
            })
        return out

    # --- helpers ---------------------------------------------------------------------------

    def heavy_capable(self, nodes: set[bytes]) -> set[bytes]:
        """A database is heavy work: not on a node on battery or a metered link."""
        unfit = set()
        for row in self.node.members_view():
            cap = row.get("capacity") or {}
            if cap.get("on_ac") is False or cap.get("metered") or cap.get("low_power"):
                try:
                    unfit.add(bytes.fromhex(str(row.get("id", ""))))
                except ValueError:
                    continue
        return nodes - unfit

    def alive_nodes(self) -> set[bytes]:
        return set(self.node.alive_peer_ids()) | {self.node.node_id}

    def _free_disk(self, nodes: set[bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for member in self.node.members_view():
            try:
                node = bytes.fromhex(str(member["id"]))
                free = int((member.get("capacity") or {}).get("disk_free") or 0)
            except (ValueError, TypeError, AttributeError):
                continue
            if node in nodes:
                out[node] = free
        return out

    def bind_host(self) -> str:
        """The host of this node's mesh listen address (several agents on one machine
        each listen on their own loopback address)."""
        from meshcloud.transport.addresses import parse_address

        addresses = self.node.transport.listen_addresses
        for address in addresses() if callable(addresses) else addresses:
            try:
                return str(parse_address(address)[0])
            except (ValueError, MeshError):
                continue
        return "127.0.0.1"

    def instance(self, name: str) -> pg.Instance:
        uid = self.uids.base_for(f"db:{name}") if self.switch_users else None
        return pg.Instance(self.root / name, uid)

    def _ports(self) -> dict[str, int]:
        try:
            value = json.loads(self.ports_file.read_text())
            return {str(k): int(v) for k, v in value.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _pg_port(self, name: str) -> int:
        ports = self._ports()
        if name not in ports:
            ports[name] = ephemeral_port()
            tmp = self.ports_file.with_suffix(".new")
            tmp.write_text(json.dumps(ports))
            tmp.replace(self.ports_file)
        return ports[name]

    def _forget_port(self, name: str) -> None:
        ports = self._ports()
        if ports.pop(name, None) is not None:
            tmp = self.ports_file.with_suffix(".new")
            tmp.write_text(json.dumps(ports))
            tmp.replace(self.ports_file)

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.node.transport.serve(DB_FORWARD_PROTOCOL, self._serve_forward)
        self.node.transport.serve(DB_CALL_PROTOCOL, self._serve_call)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.leases.run)
            await nursery.start(self.repo.run)
            nursery.start_soon(self._control_loop)
            nursery.start_soon(self._listen_loop, nursery)
            task_status.started()

    async def _control_loop(self) -> None:
        watch = self.state.watch(DATABASES.name, DB_MEMBERS.name, DB_KEPT.name)
        while True:
            watch.clear()  # a change from here on means another round
            idle = False
            try:
                idle = await self.control_round()
            except (MeshError, OSError) as exc:
                log.warning("database controller round failed: %s", exc)
            if idle:
                self.idle_waits += 1
                await watch.wait(trio.current_time() + IDLE_RECHECK)
            else:
                await trio.sleep(TICK)

    async def control_round(self) -> bool:
        """One round; True when this node has nothing to look after (no database, no
        copy or port of one, no lease, no kept key), so the next can wait for a row."""
        specs = all_databases(self.state)
        if not self.repo.wanted.is_set() and (specs or all_kept(self.state)):
            self.repo.want()
        me = self.node.node_id
        members = all_members(self.state)
        known = self.known_nodes()
        alive = self.alive_nodes()
        held = self.leases.leases()
        gone = self._gone(known, alive)
        want: set[str] = set()
        for name, spec in sorted(specs.items()):
            rows = {n: m for n, m in members.get(name, {}).items()
                    if m.incarnation == spec.created_ms}
            for row in rows.values():
                self.leases.observe_term(name, row.term)
            lease = held.get(name)
            if name in self.handing:
                continue
            excluded = excluded_nodes(me, name, spec, known=known, rows=rows, alive=alive,
                                      gone=gone, holding=lease is not None)
            try:
                local = await self._local(name, spec)
                decision = decide(me, name, spec, known=known, alive=alive, rows=rows,
                                  local=local, gone=excluded,
                                  lease_term=lease.term if lease is not None else None)
                if decision.want_lease:
                    want.add(name)
                await self._act(name, spec, decision.action, local, lease, rows, alive,
                                excluded)
                self.errors.pop(name, None)
            except (pg.PgFailed, OSError, trio.TooSlowError, MeshError) as exc:
                self.errors[name] = str(exc)[-500:]
                log.warning("database %s: %s", name, str(exc)[-300:])
        self.leases.want(want)
        self._seal_round(specs, held)
        for name in sorted(set(self.local) | set(self._ports())):
            if name not in specs:
                await self._drop(name)
        mine = {str(k[0]) for k, v in self.state.scan(DB_MEMBERS.name)
                if v is not None and len(k) == 2 and k[1] == me}
        for name in mine - set(specs):
            self.state.delete(DB_MEMBERS.name, (name, me))
        return not (specs or mine or held or self.local or self.handing or self.listeners
                    or self._ports() or all_kept(self.state))

    def _seal_round(self, specs: dict[str, DbSpec], held: dict[str, Any]) -> None:
        """Seal the passwords' keys to members that lack them, and rewrite a row of an
        earlier version (passwords in clear) sealed, on the node holding its lease."""
        self.passwords.reseal([s.key_id for s in specs.values()] +
                              [k.key_id for k in all_kept(self.state).values()])
        for name, spec in sorted(specs.items()):
            if name not in held:
                continue
            sealed_row = self.passwords.migrate(spec)
            if sealed_row is not None and all_databases(self.state).get(name) == spec:
                log.warning("database %s: its password was stored in clear (an earlier "
                            "version): sealed now", name)
                self.state.put(DATABASES.name, (name,), sealed_row)

    def _gone(self, known: list[bytes], alive: set[bytes]) -> set[bytes]:
        """Known nodes down longer than the replace delay (their copies are remade on
        other nodes)."""
        now = trio.current_time()
        for node in known:
            if node in alive:
                self.down_since.pop(node, None)
            else:
                self.down_since.setdefault(node, now)
        return {n for n, t in self.down_since.items()
                if n not in alive and now - t >= self.replace_after}

    def known_nodes(self) -> list[bytes]:
        from apps.workloads.offers import all_offers

        return sorted(set(all_offers(self.state)) | {self.node.node_id})

    async def _local(self, name: str, spec: DbSpec | None = None) -> Local:
        inst = self.instance(name)
        if spec is not None and inst.root.exists() and self._marker(inst) != spec.created_ms:
            # a copy left from an earlier database of the same name: never reuse it
            await pg.stop(inst, "immediate")
            await trio.to_thread.run_sync(lambda: shutil.rmtree(inst.root,
                                                                ignore_errors=True))
        has = inst.exists()
        return Local(has_data=has, standby_data=has and inst.is_standby(),
                     running=has and await pg.running(inst), term=self._term(inst))

    @staticmethod
    def _marker(inst: pg.Instance) -> int:
        try:
            return int((inst.root / "created").read_text())
        except (OSError, ValueError):
            return -1

    @staticmethod
    def _set_marker(inst: pg.Instance, created_ms: int) -> None:
        (inst.root / "created").write_text(str(created_ms))

    @staticmethod
    def _term(inst: pg.Instance) -> int:
        try:
            return int((inst.root / "term").read_text())
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _set_term(inst: pg.Instance, term: int) -> None:
        tmp = inst.root / "term.new"
        tmp.write_text(str(term))
        tmp.replace(inst.root / "term")

    async def _act(self, name: str, spec: DbSpec, action: str, local: Local,
                   lease: Any, rows: dict[bytes, DbMember], alive: set[bytes],
                   excluded: frozenset[bytes] = frozenset()) -> None:
        inst = self.instance(name)
        port = self._pg_port(name)
        term = lease.term if lease is not None else local.term
        if action == FENCE:
            log.warning("database %s: lease lost, stopping the primary (term %d)", name,
                        local.term)
            await pg.stop(inst, "immediate")
        elif action == INITDB and spec.restore_from:
            log.warning("database %s: restoring %s at %s", name, spec.restore_from,
                        spec.restore_at)
            await self.repo.restore(name, spec, inst)
            self._set_marker(inst, spec.created_ms)
            self._set_term(inst, term)
            pg.write_conf(inst, self._conf(inst, name, spec, port, 0))
            await pg.start(inst)
            await self._finish_restore(inst, name, spec, port)
        elif action == INITDB:
            pg.prepare(inst)
            password = self.pw(name, spec).password
            await pg.initdb(inst, name, password, port=port, standbys=0,
                            archive=self.repo.archive(inst, spec, name), params=spec.params)
            self._set_marker(inst, spec.created_ms)
            self._set_term(inst, term)
            await pg.start(inst)
            await self._create_database(inst, name, password)
        elif action == START_PRIMARY:
            self._set_term(inst, term)
            await self._sync(inst, name, spec, rows, alive, port, lease, force=True)
            await pg.start(inst)
        elif action == PROMOTE:
            log.warning("database %s: promoting this standby (term %d)", name, term)
            self._set_term(inst, term)
            await self._sync(inst, name, spec, rows, alive, port, lease, force=True)
            await pg.promote(inst)
            await pg.reload(inst)
        elif action == CLONE:
            if local.running:
                await pg.stop(inst, "immediate")
            log.info("database %s: cloning a standby from the primary", name)
            await pg.basebackup(inst, host=self.bind_host(), port=spec.port, user=name,
                                password=self.pw(name, spec).password, my_port=port,
                                standbys=spec.standbys,
                                archive=self.repo.archive(inst, spec, name),
                                app_name=standby_name(self.node.node_id),
                                params=spec.params)
            self._set_marker(inst, spec.created_ms)
            self._set_term(inst, 0)
            await pg.start(inst)
        elif action == START_STANDBY:
            await pg.start(inst)
        elif action == DROP:  # out of the group (its place was given to another node)
            await self._drop(name)
            if self.state.get(DB_MEMBERS.name, (name, self.node.node_id)) is not None:
                self.state.delete(DB_MEMBERS.name, (name, self.node.node_id))
            return
        now = await self._local(name)
        if not now.has_data:
            return
        role = STANDBY if now.standby_data else PRIMARY
        if role == PRIMARY and lease is not None and now.running:
            if spec.restore_from and not (inst.root / "restored").exists():
                await self._finish_restore(inst, name, spec, port)
            await self._sync(inst, name, spec, rows, alive, port, lease)
        healthy = now.running and await tcp_check(port)
        if role == PRIMARY and lease is None:
            healthy = False  # never routed to without the lease
        lsn, streaming = await self._lsn(inst, name, spec, port, role) if healthy \
            else (0, ())
        synced: tuple[bytes, ...] = ()
        if role == PRIMARY and lease is not None and self.sync_seen.get(name, 0) > 0:
            names = {standby_name(n): n for n in rows}
            synced = tuple(sorted(names[a] for a in streaming if a in names))
        self.local[name] = (role, port, healthy)
        row = DbMember(role=role, port=port, healthy=healthy,
                       term=now.term if role == PRIMARY else 0,
                       updated_ms=self.node.clock.wall_ms(), incarnation=spec.created_ms,
                       lsn=lsn, excluded=tuple(sorted(excluded)) if role == PRIMARY and
                       lease is not None else (), synced=synced)
        old = self.state.get(DB_MEMBERS.name, (name, self.node.node_id))
        if old is None or (old.role, old.port, old.healthy, old.term, old.incarnation,
                           old.excluded, old.synced) != \
                (row.role, row.port, row.healthy, row.term, row.incarnation, row.excluded,
                 row.synced) or \
                (row.lsn != old.lsn and row.updated_ms - old.updated_ms >= 5000):
            self.state.put(DB_MEMBERS.name, (name, self.node.node_id), row)
        if role == PRIMARY and healthy and lease is not None and self.nursery is not None:
            try:
                await self.repo.on_primary(name, spec, inst, port, self.nursery)
            except (pg.PgFailed, OSError, trio.TooSlowError, MeshError) as exc:
                self.errors[f"{name} backups"] = str(exc)[-500:]
            else:
                self.errors.pop(f"{name} backups", None)

    async def _sync(self, inst: pg.Instance, name: str, spec: DbSpec,
                    rows: dict[bytes, DbMember], alive: set[bytes], port: int,
                    lease: Any, *, force: bool = False) -> None:
        """Synchronous commit while a standby is live; without one the primary carries on
        alone (degraded) rather than blocking every write, but only once its lease was
        renewed after the standbys' nodes were seen down: a primary cut off from the
        mesh cannot renew, so it keeps waiting for its standby (no commit it acknowledges
        can be lost) until its lease runs out and it is fenced."""
        me = self.node.node_id
        live = sum(1 for n, m in rows.items()
                   if n != me and n in alive and m.role == STANDBY and m.healthy)
        standbys = min(spec.standbys, live)
        if standbys == 0 and spec.standbys > 0 and self.sync_seen.get(name, 1) > 0:
            down = [self.down_since.get(n, trio.current_time()) for n, m in rows.items()
                    if n != me and m.role == STANDBY and n not in alive]
            renewed = (lease.valid_until - self.lease_duration) if lease is not None \
                else float("-inf")
            if down and renewed <= max(down):
                standbys = 1  # not yet: stay synchronous
        if not force and self.sync_seen.get(name) == standbys:
            return
        pg.write_conf(inst, self._conf(inst, name, spec, port, standbys))
        if not force:
            await pg.reload(inst)
        self.sync_seen[name] = standbys

    def _conf(self, inst: pg.Instance, name: str, spec: DbSpec, port: int, standbys: int
              ) -> str:
        return conf_text(port=port, socket_dir=str(inst.sock), standbys=standbys,
                         archive=self.repo.archive(inst, spec, name), params=spec.params)

    async def _lsn(self, inst: pg.Instance, name: str, spec: DbSpec, port: int,
                   role: str) -> tuple[int, tuple[str, ...]]:
        """The WAL position written (primary) or replayed (standby), 0 when unknown; on a
        primary also the ``application_name`` of each standby streaming synchronously."""
        query = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint || ' ' || "
                 "coalesce((SELECT string_agg(application_name, ',') FROM "
                 "pg_stat_replication WHERE state = 'streaming' AND "
                 "sync_state IN ('sync', 'quorum')), '')"
                 if role == PRIMARY else
                 "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint")
        try:
            out = (await pg.sql(inst, port, name, self.pw(name, spec).password, query,
                                timeout=10)).split()
            return int(out[0]), tuple(a for a in "".join(out[1:]).split(",") if a)
        except (DbError, OSError, trio.TooSlowError, ValueError, IndexError):
            return 0, ()

    async def _finish_restore(self, inst: pg.Instance, name: str, spec: DbSpec,
                              port: int) -> None:
        """After ``pgbackrest restore``: wait for the promotion at the target, give the
        copy its own user and database name and password, drop the recovery settings
        pgBackRest wrote, and open its own stanza."""
        pws = self.pw(name, spec)
        password = pws.password
        source, old_pw = spec.restore_user or name, pws.restore_password or password
        hide = (password, old_pw)
        with trio.fail_after(900):
            while True:
                try:
                    out = await pg.sql(inst, port, source, old_pw,
                                       "SELECT pg_is_in_recovery()", timeout=10)
                except pg.PgFailed:
                    out = ""
                    try:  # renamed already (a round cut short after it)
                        out = await pg.sql(inst, port, name, password,
                                           "SELECT pg_is_in_recovery()", timeout=10)
                        source, old_pw = name, password
                    except pg.PgFailed:
                        pass
                if out.strip() == "f":
                    break
                await trio.sleep(0.5)
        if source != name:
            await pg.sql(inst, port, source, old_pw,
                         f"CREATE ROLE \"{name}\" SUPERUSER LOGIN PASSWORD "
                         f"'{password}'", hide=hide)
            await pg.sql(inst, port, name, password,
                         f'ALTER DATABASE "{source}" RENAME TO "{name}"')
            await pg.sql(inst, port, name, password,
                         f'ALTER ROLE "{source}" NOLOGIN PASSWORD NULL')
        elif old_pw != password:
            await pg.sql(inst, port, name, old_pw,
                         f"ALTER ROLE \"{name}\" PASSWORD '{password}'", hide=hide)
        await pg.sql(inst, port, name, password, "ALTER SYSTEM RESET ALL")
        await pg.sql(inst, port, name, password, "SELECT pg_reload_conf()")
        (inst.root / "restored").write_text(spec.restore_at)
        self.node.events.emit("db.restored", name=name, source=spec.restore_from,
                              target=spec.restore_at)

    async def _switchover(self, name: str, spec: DbSpec, inst: pg.Instance, port: int,
                          to: str) -> dict[str, Any]:
        """Planned switchover, run by the primary: pick the standby (``to`` or the most
        advanced), shut down cleanly (a fast shutdown sends every WAL record, the shutdown
        checkpoint included, to the connected standbys before it ends), become a standby
        naming the target in this node's row, give up the lease, and wait until the target
        is primary on a higher term."""
        me = self.node.node_id
        alive = self.alive_nodes()
        rows = self._rows(name)
        standbys = {n: m for n, m in rows.items()
                    if n != me and n in alive and m.role == STANDBY and m.healthy}
        if to:
            try:
                target = bytes.fromhex(to)
            except ValueError:
                raise DbError(f"bad node id {to!r}", code="bad_request") from None
            if target not in standbys:
                raise DbError(f"node {to[:12]} has no healthy standby of {name}",
                              code="bad_request")
        elif standbys:
            target = max(standbys, key=lambda n: (standbys[n].lsn, n))
        else:
            raise DbError(f"database {name!r} has no live standby to switch over to",
                          code="unavailable")
        self.pw(name, spec)  # the standby's settings need it: fail before stopping
        old_term = self._term(inst)
        started = trio.current_time()
        self.handing.add(name)
        try:
            self.local[name] = (PRIMARY, port, False)  # no new connections here
            await pg.stop(inst, "fast")
            conninfo = (f"host={self.bind_host()} port={spec.port} user={name} "
                        f"password={self.pw(name, spec).password} "
                        f"application_name={standby_name(me)}")
            pg.write_conf(inst, conf_text(port=port, socket_dir=str(inst.sock),
                                          standbys=spec.standbys, standby_of=conninfo,
                                          archive=self.repo.archive(inst, spec, name),
                                          params=spec.params))
            pg._write_as(inst, inst.data / "standby.signal", "")
            self._set_term(inst, 0)
            self.local[name] = (STANDBY, port, False)
            self.state.put(DB_MEMBERS.name, (name, me), DbMember(
                role=STANDBY, port=port, healthy=False, term=0,
                updated_ms=self.node.clock.wall_ms(), incarnation=spec.created_ms,
                handover=target))
            self.leases.want(set(self.leases.leases()) - {name})
            with trio.fail_after(HANDOVER_TIMEOUT):
                while True:
                    found = self._primary_node(name)
                    if found is not None and found[0] != me and found[1].term > old_term:
                        break
                    await trio.sleep(0.1)
        finally:
            self.handing.discard(name)
        return {"from": me.hex(), "to": found[0].hex(), "term": found[1].term,
                "seconds": round(trio.current_time() - started, 3)}

    async def _create_database(self, inst: pg.Instance, name: str, password: str) -> None:
        await pg._run(inst, [str(pg.BIN / "psql"), "-h", str(inst.sock), "-p",
                             str(self._pg_port(name)), "-U", name, "-d", "postgres",
                             "-v", "ON_ERROR_STOP=1", "-qc", f'CREATE DATABASE "{name}"'],
                      env={"PGPASSWORD": password})

    async def _drop(self, name: str) -> None:
        self.repo.stop_backup(name)
        inst = self.instance(name)
        if inst.data.exists():
            await pg.stop(inst, "immediate")
        await trio.to_thread.run_sync(lambda: shutil.rmtree(inst.root, ignore_errors=True))
        self.local.pop(name, None)
        self._forget_port(name)

    def _rows(self, name: str) -> dict[bytes, DbMember]:
        """The member rows of ``name``'s current incarnation."""
        spec = all_databases(self.state).get(name)
        if spec is None:
            return {}
        return {n: m for n, m in all_members(self.state).get(name, {}).items()
                if m.incarnation == spec.created_ms}

    def _primary_node(self, name: str) -> tuple[bytes, DbMember] | None:
        return primary_of(name, self._rows(name), self.alive_nodes())

    def _standby_node(self, name: str) -> tuple[bytes, DbMember] | None:
        """A healthy standby of ``name`` on a live node: this node's own if it has one,
        else the least behind."""
        alive = self.alive_nodes()
        found = [(m.lsn, n, m) for n, m in self._rows(name).items()
                 if m.role == STANDBY and m.healthy and n in alive and 0 < m.port < 65536]
        mine = [f for f in found if f[1] == self.node.node_id]
        if mine:
            return mine[0][1], mine[0][2]
        if not found:
            return None
        _, node, member = max(found, key=lambda t: (t[0], t[1]))
        return node, member

    # --- client connections ----------------------------------------------------------------

    async def _listen_loop(self, nursery: trio.Nursery) -> None:
        watch = self.state.watch(DATABASES.name)
        while True:
            watch.clear()
            wanted: dict[int, tuple[str, bool]] = {}
            for name, spec in all_databases(self.state).items():
                wanted[spec.port] = (name, False)
                if spec.ro_port:
                    wanted[spec.ro_port] = (name, True)
            for port, scope in list(self.listeners.items()):
                if port not in wanted:
                    scope.cancel()
                    del self.listeners[port]
            for port, (name, read_only) in wanted.items():
                if port not in self.listeners:
                    scope = trio.CancelScope()
                    self.listeners[port] = scope
                    nursery.start_soon(self._listen, name, port, scope, read_only)
            if wanted:  # a listener that failed to bind is retried on this tick
                await trio.sleep(TICK / 2)
            else:
                await watch.wait(trio.current_time() + IDLE_RECHECK)

    async def _listen(self, name: str, port: int, scope: trio.CancelScope,
                      read_only: bool = False) -> None:
        with scope:
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.bind_host())
            except OSError as exc:
                self.errors[f"port {port}"] = str(exc)
                await trio.sleep(5)
                if self.listeners.get(port) is scope:
                    del self.listeners[port]
                return

            async def handle(client: trio.SocketStream) -> None:
                try:
                    await self.forward(client, name, read_only)
                except Exception:  # one connection's bug must not stop the node
                    log.exception("database %s: forwarding a connection failed", name)
                    await client.aclose()

            await trio.serve_listeners(handle, listeners)

    async def forward(self, client: trio.SocketStream, name: str, read_only: bool = False
                      ) -> bool:
        """Carry ``client`` to the primary of ``name`` (``read_only``: to a standby, this
        node's own first); closed at once when none is live."""
        found = self._standby_node(name) if read_only else self._primary_node(name)
        upstream: Any = None
        if found is not None:
            node, member = found
            upstream = await connect_upstream(
                node == self.node.node_id,
                lambda: trio.open_tcp_stream("127.0.0.1", member.port),
                lambda: self._open_forward(node, name, read_only),
                f"database {name}: no way to its primary")
        if upstream is None:
            self.refused += 1
            await client.aclose()
            return False
        self.forwarded += 1
        await splice_upstream(client, upstream)
        return True

    async def _open_forward(self, node: bytes, name: str, read_only: bool = False) -> Any:
        return await open_forward(self.node.transport, node, name,
                                  RO_ENDPOINT if read_only else ENDPOINT, 0,
                                  protocol=DB_FORWARD_PROTOCOL)

    def _resolve(self, request: ForwardOpen) -> int | None:
        """Only this node's own primary (a peer cannot make us connect elsewhere)."""
        local = self.local.get(request.workload)
        if local is None or not local[2]:
            return None
        if request.endpoint == ENDPOINT and local[0] == PRIMARY:
            return local[1]
        if request.endpoint == RO_ENDPOINT and local[0] == STANDBY:
            return local[1]
        return None

    async def _serve_forward(self, stream: Any) -> None:
        await serve_forward(stream, self._resolve)

    # --- node hooks ------------------------------------------------------------------------

    def api_routes(self) -> list[Any]:
        from apps.db.api import routes

        return routes(self)

    def ui_routes(self, ui: Any) -> list[Any]:
        from apps.db.ui import routes

        return routes(ui, self)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("databases", "Databases", "/ui/databases", True)]

    def status(self) -> dict[str, Any]:
        return {"local": {n: {"role": r, "port": p, "healthy": h}
                          for n, (r, p, h) in sorted(self.local.items())},
                "errors": dict(self.errors), "forwarded": self.forwarded,
                "refused": self.refused}


async def tcp_check(port: int, timeout: float = 2.0) -> bool:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


def _passwords_of(node: Any) -> DbPasswords:
    """Passwords sealed to the node keys ``ingress_keys`` publishes (the ingress service
    publishes this node's)."""
    from apps.ingress.tables import INGRESS_KEYS, seal_keys
    from meshcloud.kit.sealed import node_sealing

    return DbPasswords(node.state, *node_sealing(node, INGRESS_KEYS, seal_keys))
