"""The database service of a node: the controller that runs this node's PostgreSQL
instances (primary or standby), the per-database TCP port every node listens on, and the
mesh forward that carries a client to the node running the primary."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.db import pg
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
    conf_text,
    decide,
    free_port,
    placement,
    primary_of,
)
from apps.db.messages import DB_FORWARD_PROTOCOL, DbMember, DbSpec
from apps.db.tables import DATABASES, DB_MEMBERS, all_databases, all_members
from apps.ingress.forward import ForwardError, serve_forward, splice_stream, splice_tcp
from apps.ingress.messages import ForwardOpen, ForwardReply
from apps.ingress.ports import ephemeral_port
from apps.leases import LEASE_DURATION, RENEW_EVERY
from apps.workloads.leasing import LeaseService
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

TICK = 1.0
"""Seconds between controller rounds."""
OPEN_TIMEOUT = 5.0
ENDPOINT = "pg"
DB_LEASE_PROTOCOL = "/meshcloud/db-lease/1"
LOCAL_LEASE = 6.0
LOCAL_RENEW = 1.0
"""Lease timing under ``--profile local`` (as the workloads': one machine, fast failover)."""


class DbService(ServiceBase):
    name = "db"
    events = ("db.created", "db.removed")

    def __init__(self, node: NodeContext) -> None:
        from apps.runtimes.homes import default_homes, ensure_root_dir
        from apps.runtimes.users import UidAllocator, can_switch_user

        self.node = node
        self.state = node.state
        node.state.open_table(DATABASES)
        node.state.open_table(DB_MEMBERS)
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
        """name → (role, postgres port, healthy) of the instances running here."""
        self.errors: dict[str, str] = {}
        self.listeners: dict[int, trio.CancelScope] = {}
        self.forwarded = 0
        self.refused = 0
        self.sync_seen: dict[str, int] = {}
        local = node.config.profile == "local"
        self.leases = LeaseService(node.node_id, node.transport, self.known_nodes,
                                   duration=LOCAL_LEASE if local else LEASE_DURATION,
                                   renew_every=LOCAL_RENEW if local else RENEW_EVERY,
                                   protocol=DB_LEASE_PROTOCOL)

    def tables(self) -> tuple[Any, ...]:
        return (DATABASES, DB_MEMBERS)

    # --- requests (API) --------------------------------------------------------------------

    def create(self, name: str, *, standbys: int = 0, version: int = 15,
               port: int | None = None) -> DbSpec:
        from apps.ingress.tables import exposures

        specs = all_databases(self.state)
        check_create(name, standbys, version, specs)
        taken = {s.port for s in specs.values()} | set(exposures(self.state))
        if port is None:
            port = free_port(taken)
        elif not 1024 <= port < 65536 or port in taken:
            raise DbError(f"port {port} is taken or out of range", code="conflict")
        nodes = self.heavy_capable(self.alive_nodes())
        if len(nodes) < 1 + standbys:
            raise DbError(f"{1 + standbys} nodes needed, {len(nodes)} alive",
                          code="no_nodes")
        home = placement(name, nodes, 0)[0]
        spec = DbSpec(port=port, password=secrets.token_urlsafe(24), home=home, standbys=standbys,
                      version=version, created_ms=self.node.clock.wall_ms())
        self.state.put(DATABASES.name, (name,), spec)
        self.node.events.emit("db.created", name=name, port=port)
        return spec

    def remove(self, name: str) -> None:
        if name not in all_databases(self.state):
            raise NotFoundError(f"no database {name!r}")
        self.state.delete(DATABASES.name, (name,))
        self.node.events.emit("db.removed", name=name)

    def spec(self, name: str) -> DbSpec:
        spec = all_databases(self.state).get(name)
        if spec is None:
            raise NotFoundError(f"no database {name!r}")
        return spec

    def url(self, name: str) -> str:
        spec = self.spec(name)
        return f"postgresql://{name}:{spec.password}@{self.bind_host()}:{spec.port}/{name}"

    def overview(self) -> list[dict[str, Any]]:
        members = all_members(self.state)
        alive = self.alive_nodes()
        out = []
        for name, spec in sorted(all_databases(self.state).items()):
            rows = members.get(name, {})
            primary = primary_of(name, rows, alive)
            out.append({
                "name": name, "port": spec.port, "standbys": spec.standbys,
                "version": spec.version, "home": spec.home.hex(),
                "primary": primary[0].hex() if primary else None,
                "members": [{"node": n.hex(), "role": m.role, "healthy": m.healthy,
                             "term": m.term, "alive": n in alive}
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
        async with trio.open_nursery() as nursery:
            await nursery.start(self.leases.run)
            nursery.start_soon(self._control_loop)
            nursery.start_soon(self._listen_loop, nursery)
            task_status.started()

    async def _control_loop(self) -> None:
        while True:
            try:
                await self.control_round()
            except (MeshError, OSError) as exc:
                log.warning("database controller round failed: %s", exc)
            await trio.sleep(TICK)

    async def control_round(self) -> None:
        specs = all_databases(self.state)
        me = self.node.node_id
        members = all_members(self.state)
        known = self.known_nodes()
        alive = self.alive_nodes()
        held = self.leases.leases()
        want: set[str] = set()
        for name, spec in sorted(specs.items()):
            rows = members.get(name, {})
            for row in rows.values():
                self.leases.observe_term(name, row.term)
            lease = held.get(name)
            try:
                local = await self._local(name, spec)
                decision = decide(me, name, spec, known=known, alive=alive, rows=rows,
                                  local=local,
                                  lease_term=lease.term if lease is not None else None)
                if decision.want_lease:
                    want.add(name)
                await self._act(name, spec, decision.action, local, lease, rows, alive)
                self.errors.pop(name, None)
            except (pg.PgFailed, OSError, trio.TooSlowError, MeshError) as exc:
                self.errors[name] = str(exc)[-500:]
                log.warning("database %s: %s", name, str(exc)[-300:])
        self.leases.want(want)
        for name in sorted(set(self.local) | set(self._ports())):
            if name not in specs:
                await self._drop(name)
        mine = {str(k[0]) for k, v in self.state.scan(DB_MEMBERS.name)
                if v is not None and len(k) == 2 and k[1] == me}
        for name in mine - set(specs):
            self.state.delete(DB_MEMBERS.name, (name, me))

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
                   lease: Any, rows: dict[bytes, DbMember], alive: set[bytes]) -> None:
        inst = self.instance(name)
        port = self._pg_port(name)
        term = lease.term if lease is not None else local.term
        if action == FENCE:
            log.warning("database %s: lease lost, stopping the primary (term %d)", name,
                        local.term)
            await pg.stop(inst, "immediate")
        elif action == INITDB:
            await pg.initdb(inst, name, spec.password, port=port, standbys=0)
            self._set_marker(inst, spec.created_ms)
            self._set_term(inst, term)
            await pg.start(inst)
            await self._create_database(inst, name, spec.password)
        elif action == START_PRIMARY:
            self._set_term(inst, term)
            await self._sync(inst, name, spec, rows, alive, port, force=True)
            await pg.start(inst)
        elif action == PROMOTE:
            log.warning("database %s: promoting this standby (term %d)", name, term)
            self._set_term(inst, term)
            await self._sync(inst, name, spec, rows, alive, port, force=True)
            await pg.promote(inst)
            await pg.reload(inst)
        elif action == CLONE:
            if local.running:
                await pg.stop(inst, "immediate")
            log.info("database %s: cloning a standby from the primary", name)
            await pg.basebackup(inst, host=self.bind_host(), port=spec.port, user=name,
                                password=spec.password, my_port=port,
                                standbys=spec.standbys)
            self._set_marker(inst, spec.created_ms)
            self._set_term(inst, 0)
            await pg.start(inst)
        elif action == START_STANDBY:
            await pg.start(inst)
        elif action == DROP:
            await self._drop(name)
            return
        now = await self._local(name)
        if not now.has_data:
            return
        role = STANDBY if now.standby_data else PRIMARY
        if role == PRIMARY and lease is not None and now.running:
            await self._sync(inst, name, spec, rows, alive, port)
        healthy = now.running and await tcp_check(port)
        if role == PRIMARY and lease is None:
            healthy = False  # never routed to without the lease
        self.local[name] = (role, port, healthy)
        row = DbMember(role=role, port=port, healthy=healthy,
                       term=now.term if role == PRIMARY else 0,
                       updated_ms=self.node.clock.wall_ms())
        old = self.state.get(DB_MEMBERS.name, (name, self.node.node_id))
        if old is None or (old.role, old.port, old.healthy, old.term) != \
                (row.role, row.port, row.healthy, row.term):
            self.state.put(DB_MEMBERS.name, (name, self.node.node_id), row)

    async def _sync(self, inst: pg.Instance, name: str, spec: DbSpec,
                    rows: dict[bytes, DbMember], alive: set[bytes], port: int,
                    *, force: bool = False) -> None:
        """Synchronous commit while a standby is live; without one the primary carries on
        alone (degraded) rather than blocking every write."""
        me = self.node.node_id
        live = sum(1 for n, m in rows.items()
                   if n != me and n in alive and m.role == STANDBY and m.healthy)
        standbys = min(spec.standbys, live)
        if not force and self.sync_seen.get(name) == standbys:
            return
        pg.write_conf(inst, conf_text(port=port, socket_dir=str(inst.sock),
                                      standbys=standbys))
        if not force:
            await pg.reload(inst)
        self.sync_seen[name] = standbys

    async def _create_database(self, inst: pg.Instance, name: str, password: str) -> None:
        await pg._run(inst, [str(pg.BIN / "psql"), "-h", str(inst.sock), "-p",
                             str(self._pg_port(name)), "-U", name, "-d", "postgres",
                             "-v", "ON_ERROR_STOP=1", "-qc", f'CREATE DATABASE "{name}"'],
                      env={"PGPASSWORD": password})

    async def _drop(self, name: str) -> None:
        inst = self.instance(name)
        if inst.data.exists():
            await pg.stop(inst, "immediate")
        await trio.to_thread.run_sync(lambda: shutil.rmtree(inst.root, ignore_errors=True))
        self.local.pop(name, None)
        self._forget_port(name)

    def _primary_node(self, name: str) -> tuple[bytes, DbMember] | None:
        rows = all_members(self.state).get(name, {})
        return primary_of(name, rows, self.alive_nodes())

    # --- client connections ----------------------------------------------------------------

    async def _listen_loop(self, nursery: trio.Nursery) -> None:
        while True:
            wanted = {spec.port: name for name, spec in all_databases(self.state).items()}
            for port, scope in list(self.listeners.items()):
                if port not in wanted:
                    scope.cancel()
                    del self.listeners[port]
            for port, name in wanted.items():
                if port not in self.listeners:
                    scope = trio.CancelScope()
                    self.listeners[port] = scope
                    nursery.start_soon(self._listen, name, port, scope)
            await trio.sleep(TICK / 2)

    async def _listen(self, name: str, port: int, scope: trio.CancelScope) -> None:
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
                    await self.forward(client, name)
                except Exception:  # one connection's bug must not stop the node
                    log.exception("database %s: forwarding a connection failed", name)
                    await client.aclose()

            await trio.serve_listeners(handle, listeners)

    async def forward(self, client: trio.SocketStream, name: str) -> bool:
        """Carry ``client`` to the primary of ``name``; closed at once when none is live."""
        found = self._primary_node(name)
        upstream: Any = None
        if found is not None:
            node, member = found
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    if node == self.node.node_id:
                        upstream = await trio.open_tcp_stream("127.0.0.1", member.port)
                    else:
                        upstream = await self._open_forward(node, name)
            except (ForwardError, MeshError, OSError, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.EndOfChannel) as exc:
                log.info("database %s: no way to its primary: %r", name, exc)
                upstream = None
        if upstream is None:
            self.refused += 1
            await client.aclose()
            return False
        self.forwarded += 1
        if isinstance(upstream, trio.SocketStream):
            await splice_tcp(client, upstream)
        else:
            await splice_stream(client, upstream)
        return True

    async def _open_forward(self, node: bytes, name: str) -> Any:
        stream = await self.node.transport.open_stream(node, DB_FORWARD_PROTOCOL)
        try:
            await stream.send(encode_message(ForwardOpen(workload=name, endpoint=ENDPOINT,
                                                         index=0)))
            reply = decode_message(await stream.receive(), ForwardReply, max_size=4096)
        except BaseException:
            with trio.move_on_after(1):
                await stream.abort("database forward open failed")
            raise
        if not reply.ok:
            with trio.move_on_after(1):
                await stream.abort("refused")
            raise ForwardError(reply.code or "refused", reply.message)
        return stream

    def _resolve(self, request: ForwardOpen) -> int | None:
        """Only this node's own primary (a peer cannot make us connect elsewhere)."""
        local = self.local.get(request.workload)
        if request.endpoint != ENDPOINT or local is None or local[0] != PRIMARY \
                or not local[2]:
            return None
        return local[1]

    async def _serve_forward(self, stream: Any) -> None:
        await serve_forward(stream, self._resolve)

    # --- node hooks ------------------------------------------------------------------------

    def api_routes(self) -> list[Any]:
        from apps.db.api import routes

        return routes(self)

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


