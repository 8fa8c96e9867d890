"""The ingress service of a node: endpoint rows and health, forwarding, TCP ports.

Built after the workload service (it lends the reconciler the node's port book, so each
replica's published endpoints get ephemeral host ports). ``run`` serves
``/meshcloud/forward/1`` and starts two loops:

* **endpoints**: every ``check_every`` seconds, a TCP connect check of each endpoint of
  each replica running here; the rows of ``endpoints`` this node owns follow
  (:func:`~apps.ingress.routing.publish_plan`);
* **exposures**: every node listens on each port of ``exposures`` and forwards each
  connection to a live replica (power of two choices on this node's open connections;
  a failed connect is retried on another replica, up to ``MAX_ATTEMPTS``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from apps.ingress import fastpath
from apps.ingress.forward import (
    OPEN_TIMEOUT,
    ForwardError,
    open_forward,
    serve_forward,
    splice_stream,
    splice_tcp,
)
from apps.ingress.http import HttpLimits
from apps.ingress.httpcore import HttpRoute, match_route, route_table
from apps.ingress.messages import FORWARD_PROTOCOL, Exposure, ForwardOpen
from apps.ingress.pool import UpstreamPool
from apps.ingress.ports import PortBook
from apps.ingress.routing import LocalReplica, RowKey, Target, live_targets, pick, publish_plan
from apps.ingress.sitecerts import SiteCerts
from apps.ingress.tables import ENDPOINTS, EXPOSURES, SITE_CERTS, endpoint_rows, exposures
from apps.ingress.targets import HostHandler, HostLookup
from apps.ingress.tls import CertStore
from apps.workloads.core import WorkloadEntry
from apps.workloads.reconciler import read_workloads
from meshcloud.clock import next_tick
from meshcloud.errors import MeshError
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from apps.workloads.service import WorkloadService
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
HTTP_ENV = "MESHCLOUD_HTTP"
HTTPS_ENV = "MESHCLOUD_HTTPS"
DEFAULT_HTTP = "127.0.0.1:7080"
MESH_BIND = "mesh"
"""Exposure bind meaning: the host of this node's mesh listen address."""
CHECK_TIMEOUT = 1.0
ROWS_MAX_AGE = 2.0
ALIVE_MAX_AGE = 0.1
"""Seconds a request may reuse the routable replicas computed for an earlier one: the
rows and the workloads are followed exactly; membership (a death) within this."""
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\nconnection: close\r\n"
        b"content-type: text/plain\r\ncontent-length: 22\r\n\r\ntoo many connections\r\n")


def http_limits_from_env() -> HttpLimits:
    """The HTTP ingress limits; ``MESHCLOUD_HTTP_HEADER_TIMEOUT``,
    ``MESHCLOUD_HTTP_IDLE_TIMEOUT`` and ``MESHCLOUD_HTTP_MAX_CLIENTS`` override them."""
    base = HttpLimits()
    def number(name: str, default: float) -> float:
        try:
            value = float(os.environ.get(name, ""))
        except ValueError:
            return default
        return value if value > 0 else default
    return HttpLimits(
        header_timeout=number("MESHCLOUD_HTTP_HEADER_TIMEOUT", base.header_timeout),
        idle_timeout=number("MESHCLOUD_HTTP_IDLE_TIMEOUT", base.idle_timeout),
        max_clients=int(number("MESHCLOUD_HTTP_MAX_CLIENTS", base.max_clients)))


class IngressService(ServiceBase):
    name = "ingress"

    def __init__(self, node: NodeContext, workloads: WorkloadService) -> None:
        self.node = node
        self.state = node.state
        self.workloads = workloads
        node.state.open_table(ENDPOINTS)
        node.state.open_table(EXPOSURES)
        self.book = PortBook(node.datadir.path / "ingress" / "ports.json")
        workloads.reconciler.core.endpoint_port = self.book.port
        local = node.config.profile == "local"
        self.check_every = 0.5 if local else 10.0 if node.config.profile == "phone" else 2.0
        self.rng = random.Random()
        self.open: defaultdict[RowKey, int] = defaultdict(int)
        self.running_here: dict[RowKey, LocalReplica] = {}
        self.listeners: dict[int, tuple[Exposure, trio.CancelScope]] = {}
        self.listen_errors: dict[int, str] = {}
        self.forwarded = 0
        self.failed = 0
        self.retries = 0
        self.http_address = ""
        self.http_error = ""
        self.https_address = ""
        self.https_error = ""
        self.certs = CertStore(node.datadir.path / "ingress" / "certs",
                               wall=lambda: node.clock.wall_ms() / 1000)
        self.site_certs = SiteCerts(node)
        self.http_limits = http_limits_from_env()
        self.http_clients = 0
        self.http_busy = 0
        self.http_refused = 0
        self.http_timeouts = 0
        self.http_not_found = 0
        self.lookups: list[HostLookup] = []
        self.pool = UpstreamPool()
        self._rows: tuple[float, dict[RowKey, Any]] | None = None
        self._routes: tuple[Any, dict[str, list[HttpRoute]]] = (None, {})
        self._targets: dict[tuple[str, str], tuple[float, Any, Any, list[Target]]] = {}
        self._nursery: trio.Nursery | None = None
        """Where the lifelines of the HTTP ingress's direct-path upstreams run."""

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.node.transport.serve(FORWARD_PROTOCOL, self._serve_forward)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_endpoints, self.state.subscribe(ENDPOINTS.name))
            nursery.start_soon(self._endpoint_loop)
            nursery.start_soon(self._exposure_loop, nursery)
            nursery.start_soon(self._http)
            nursery.start_soon(self._https)
            nursery.start_soon(self._site_cert_loop)
            task_status.started()

    async def _watch_endpoints(self, changes: Any) -> None:
        async for _ in changes:
            self._rows = None

    def endpoint_rows(self) -> dict[RowKey, Any]:
        """The ``endpoints`` table, decoded once per change (a request must not scan it;
        re-read every ``ROWS_MAX_AGE`` seconds should a change event be missed)."""
        now = trio.current_time()
        if self._rows is None or now - self._rows[0] > ROWS_MAX_AGE:
            self._rows = (now, endpoint_rows(self.state))
        return self._rows[1]

    async def _site_cert_loop(self) -> None:
        """Install the mesh CA's site certificates for this node (and, on the admin node,
        seal their keys to nodes that joined later)."""
        changes = self.state.subscribe(SITE_CERTS.name)
        while True:
            try:
                self.site_certs.sync()
            except (MeshError, OSError) as exc:
                log.warning("site certificates not installed: %s", exc)
            with trio.move_on_after(self.check_every * 4):
                await changes.receive()

    def _entries(self) -> dict[str, WorkloadEntry]:
        snapshot = self.workloads.reconciler.last
        return snapshot.workloads if snapshot is not None else read_workloads(self.state)

    # --- endpoints and health ---------------------------------------------------------------

    async def _endpoint_loop(self) -> None:
        while True:
            await self._sweep_pool()
            try:
                await self.check_endpoints()
            except (MeshError, OSError) as exc:
                log.warning("endpoint check failed: %s", exc)
            await trio.sleep_until(next_tick(trio.current_time(), self.check_every))

    async def check_endpoints(self) -> None:
        snapshot = self.workloads.reconciler.last
        if snapshot is None:
            return
        entries = snapshot.workloads
        ports: dict[RowKey, int] = {}
        for status in snapshot.observed:
            entry = entries.get(status.workload)
            if entry is None or not status.alive:
                continue
            for endpoint, _ in entry.spec.publish:
                port = self.book.lookup(status.workload, status.replica, endpoint)
                if port is not None:
                    ports[(status.workload, endpoint, status.replica)] = port
        results: dict[RowKey, LocalReplica] = {}

        async def check(key: RowKey, port: int) -> None:
            results[key] = LocalReplica(port, await tcp_check("127.0.0.1", port))

        async with trio.open_nursery() as nursery:
            for key, port in ports.items():
                nursery.start_soon(check, key, port)
        self.running_here = results
        me = self.node.node_id
        # during a hand-over (make before break) two nodes run the same index: only the
        # claim's holder publishes it, so the two never overwrite each other's row
        claimed = {k: v for k, v in results.items()
                   if (claim := snapshot.claims.get((k[0], k[2]))) is not None
                   and claim.node == me}
        puts, deletes = publish_plan(me, claimed, endpoint_rows(self.state))
        for key, record in puts.items():
            self.state.put(ENDPOINTS.name, key,
                           record.__class__(node=record.node, port=record.port,
                                            healthy=record.healthy,
                                            updated_ms=self.node.clock.wall_ms()))
        for key in deletes:
            self.state.delete(ENDPOINTS.name, key)
        keep = {(s.workload, s.replica) for s in snapshot.observed if s.alive}
        keep |= {(w, i) for w, mine in snapshot.assignment.items()
                 for i, node in mine.items() if node == me}
        self.book.forget_except(keep)

    async def _sweep_pool(self) -> None:
        """Close kept upstream connections that expired or whose replica is no longer
        routable."""
        live: set[RowKey] = set()
        for workload, endpoint in {(k[0], k[1]) for k in self.pool.idle}:
            live |= {t.key for t in self.targets(workload, endpoint)}
        for stream, _ in self.pool.sweep(lambda key: key in live):
            with trio.move_on_after(1):
                await stream.aclose()

    def _resolve(self, request: ForwardOpen) -> int | None:
        seen = self.running_here.get((request.workload, request.endpoint, request.index))
        return seen.port if seen is not None else None

    async def _serve_forward(self, stream: Any) -> None:
        await serve_forward(stream, self._resolve)

    # --- routing ----------------------------------------------------------------------------

    def targets(self, workload: str, endpoint: str) -> list[Target]:
        """The routable replicas of ``workload:endpoint``, computed again when the rows or
        the workloads change and at least every ``ALIVE_MAX_AGE`` seconds (membership):
        a request must not scan the member list."""
        rows = self.endpoint_rows()
        snapshot = self.workloads.reconciler.last
        now = trio.current_time()
        seen = self._targets.get((workload, endpoint))
        if seen is not None and seen[1] is rows and seen[2] is snapshot and \
                snapshot is not None and now - seen[0] < ALIVE_MAX_AGE:
            return seen[3]
        entry = self._entries().get(workload)
        if entry is None:
            return []
        alive = set(self.node.alive_peer_ids()) | {self.node.node_id}
        found = live_targets(rows, workload, endpoint, alive=alive, replicas=entry.replicas)
        if len(self._targets) > 1024:
            self._targets.clear()
        self._targets[(workload, endpoint)] = (now, rows, snapshot, found)
        return found

    def add_host_lookup(self, lookup: HostLookup) -> None:
        """Let an in-process service (static sites) answer requests that match no
        workload route; lookups are asked in the order they were added."""
        self.lookups.append(lookup)

    def host_handler(self, host: str, path: str) -> HostHandler | None:
        for lookup in self.lookups:
            try:
                handler = lookup(host, path)
            except Exception:  # one service's bug must not stop the ingress
                log.exception("host lookup for %r failed", host)
                continue
            if handler is not None:
                return handler
        return None

    def http_routes(self) -> dict[str, list[HttpRoute]]:
        """{host: routes} of the workloads' domains, computed once per snapshot."""
        snapshot = self.workloads.reconciler.last
        if snapshot is None:
            return route_table(self._entries())
        if self._routes[0] is not snapshot:
            self._routes = (snapshot, route_table(self._entries()))
        return self._routes[1]

    def http_route(self, host: str, path: str) -> HttpRoute | None:
        return match_route(self.http_routes(), host, path)

    def pick_target(self, workload: str, endpoint: str, exclude: set[RowKey]
                    ) -> Target | None:
        return pick(self.targets(workload, endpoint), self.open, self.rng, exclude)

    async def connect(self, workload: str, endpoint: str, exclude: set[RowKey] | None = None,
                      *, pipe: bool = False) -> tuple[Target, Any] | None:
        """A connection to a live replica of ``workload:endpoint`` not in ``exclude``: a
        TCP stream to a replica on this node, else a forward stream, or with ``pipe`` a
        :class:`~apps.ingress.sealed.SealedStream` to the target's forward relay when it
        offers the direct path (None if no replica could be reached in ``MAX_ATTEMPTS``
        tries)."""
        tried: set[RowKey] = set(exclude or ())
        for _ in range(MAX_ATTEMPTS):
            target = pick(self.targets(workload, endpoint), self.open, self.rng, tried)
            if target is None:
                break
            tried.add(target.key)
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    if target.node == self.node.node_id:
                        upstream: Any = await trio.open_tcp_stream("127.0.0.1", target.port)
                    else:
                        upstream = await open_forward(self.node.transport, target.node,
                                                      workload, endpoint, target.index)
                        if pipe:
                            upstream = await self._pipe(upstream)
            except (ForwardError, MeshError, OSError, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.EndOfChannel) as exc:
                log.info("forward to %s replica %d on %s failed: %r", workload, target.index,
                         target.node.hex()[:12], exc)
                self.retries += 1
                continue
            return target, upstream
        return None

    async def _pipe(self, stream: Any) -> Any:
        """``stream`` (an opened forward) as a sealed connection to the target's relay
        (the direct path), or itself when the bytes stay on it."""
        if self._nursery is None:
            return stream
        try:
            piped = await fastpath.open_sealed(stream, self._nursery)
        except BaseException:
            with trio.move_on_after(1):
                await stream.abort("forward path negotiation failed")
            raise
        return stream if piped is None else piped

    async def forward(self, client: trio.SocketStream, workload: str, endpoint: str) -> bool:
        """Carry ``client`` to a live replica of ``workload:endpoint``; False (client
        closed) if none could be reached."""
        connected = await self.connect(workload, endpoint)
        if connected is None:
            self.failed += 1
            await client.aclose()
            return False
        target, upstream = connected
        self.open[target.key] += 1
        self.forwarded += 1
        try:
            if isinstance(upstream, trio.SocketStream):
                await splice_tcp(client, upstream)
            else:
                await splice_stream(client, upstream)
        finally:
            self.open[target.key] -= 1
        return True

    # --- TCP ports --------------------------------------------------------------------------

    async def _exposure_loop(self, nursery: trio.Nursery) -> None:
        while True:
            wanted = exposures(self.state)
            for port, (exposure, scope) in list(self.listeners.items()):
                if wanted.get(port) != exposure:
                    scope.cancel()
                    del self.listeners[port]
            for port, exposure in wanted.items():
                if port not in self.listeners:
                    scope = trio.CancelScope()
                    self.listeners[port] = (exposure, scope)
                    nursery.start_soon(self._listen, port, exposure, scope)
            await trio.sleep_until(next_tick(trio.current_time(), self.check_every))

    async def _listen(self, port: int, exposure: Exposure, scope: trio.CancelScope) -> None:
        with scope:
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.bind_host(exposure))
            except (OSError, MeshError) as exc:
                self.listen_errors[port] = str(exc)
                log.warning("cannot listen on %s:%d: %s", exposure.bind, port, exc)
                await trio.sleep(5)  # then the exposure loop tries again
                if self.listeners.get(port, (None,))[0] == exposure:
                    del self.listeners[port]
                return
            self.listen_errors.pop(port, None)

            async def handle(client: trio.SocketStream) -> None:
                try:
                    await self.forward(client, exposure.workload, exposure.endpoint)
                except Exception:  # one connection's bug must not stop the node
                    log.exception("forwarding a connection on port %d failed", port)
                    await client.aclose()

            await trio.serve_listeners(handle, listeners)

    def http_setting(self) -> str:
        """Where the HTTP ingress listens: ``$MESHCLOUD_HTTP``, else the node's
        ``ingress`` setting (``--ingress``, config.toml), else ``127.0.0.1:7080``."""
        text = os.environ.get(HTTP_ENV, "").strip()
        return text or str(getattr(self.node.config, "ingress", "") or DEFAULT_HTTP)

    async def _http(self) -> None:
        """The HTTP ingress on ``HOST:PORT``, ``mesh:PORT`` or ``off``."""
        await self._serve_ingress(self.http_setting(), tls=False)

    def https_setting(self) -> str:
        """Where the HTTPS ingress listens: ``$MESHCLOUD_HTTPS``, else the node's
        ``ingress_tls`` setting (``--ingress-tls``); off by default."""
        text = os.environ.get(HTTPS_ENV, "").strip()
        return text or str(getattr(self.node.config, "ingress_tls", "") or "off")

    def https_redirect(self, host: str) -> str | None:
        """``https://HOST[:PORT]`` when plain HTTP for ``host`` goes to HTTPS: redirects
        are on (``ingress_redirect``, ``$MESHCLOUD_HTTPS_REDIRECT=1``), HTTPS listens and
        a certificate for ``host`` is installed; else None."""
        wanted = os.environ.get("MESHCLOUD_HTTPS_REDIRECT", "").strip() == "1" or \
            bool(getattr(self.node.config, "ingress_redirect", False))
        if not (wanted and host and self.https_address) or host.startswith("["):
            return None
        if not self.certs.covers(host):
            return None
        port = self.https_address.rsplit(":", 1)[1]
        return f"https://{host}" + ("" if port == "443" else f":{port}")

    async def _https(self) -> None:
        """The HTTPS ingress: certificates from ``DATA_DIR/ingress/certs`` by SNI."""
        await self._serve_ingress(self.https_setting(), tls=True)

    async def _serve_ingress(self, text: str, *, tls: bool) -> None:
        from apps.ingress.http import serve_http

        if text == "off":
            return
        host, _, port_text = text.rpartition(":")
        if host == MESH_BIND:
            host = self.bind_host(Exposure(workload="", endpoint="", bind=MESH_BIND))
        try:
            listeners: list[Any] = await trio.open_tcp_listeners(
                int(port_text), host=host.strip("[]") or None)
        except (OSError, ValueError) as exc:
            if tls:
                self.https_error = f"{text}: {exc}"
            else:
                self.http_error = f"{text}: {exc}"
            log.warning("%s ingress not started on %s: %s", "HTTPS" if tls else "HTTP", text,
                        exc)
            return
        sockname = listeners[0].socket.getsockname()
        if tls:
            self.https_address = f"{sockname[0]}:{sockname[1]}"
            self.certs.refresh(force=True)
            context = self.certs.listener_context()
            listeners = [trio.SSLListener(x, context, https_compatible=True)
                         for x in listeners]
        else:
            self.http_address = f"{sockname[0]}:{sockname[1]}"

        async def handle(client: Any) -> None:
            if self.http_clients >= self.http_limits.max_clients:
                self.http_busy += 1
                with trio.move_on_after(1):
                    try:
                        await client.send_all(BUSY)
                    except (OSError, trio.BrokenResourceError):
                        pass
                    await client.aclose()
                return
            self.http_clients += 1
            try:
                if tls:
                    with trio.move_on_after(self.http_limits.header_timeout) as slow:
                        await client.do_handshake()
                    if slow.cancelled_caught:
                        self.http_timeouts += 1
                        await trio.aclose_forcefully(client)
                        return
                await serve_http(client, self, "https" if tls else "http")
            except (OSError, trio.BrokenResourceError) as exc:  # a failed TLS handshake
                log.debug("ingress client: %r", exc)
            except Exception:  # one connection's bug must not stop the node
                log.exception("ingress connection failed")
            finally:
                self.http_clients -= 1

        await trio.serve_listeners(handle, listeners)

    def bind_host(self, exposure: Exposure) -> str:
        """The address to listen on: the exposure's, or for ``mesh`` the host this node's
        mesh transport listens on (several agents on one machine, each on its own
        loopback address, or a node exposing on its LAN address)."""
        if exposure.bind != MESH_BIND:
            return exposure.bind
        from meshcloud.transport.addresses import parse_address

        addresses = self.node.transport.listen_addresses
        for address in addresses() if callable(addresses) else addresses:
            try:
                return parse_address(address)[0]
            except (ValueError, MeshError):
                continue
        return "127.0.0.1"

    # --- node hooks -------------------------------------------------------------------------

    def api_routes(self) -> list[Any]:
        from apps.ingress.api import routes

        return routes(self)

    def route_rows(self) -> list[dict[str, Any]]:
        """The rows of ``GET /v1/ingress/routes`` (for other services' UI pages)."""
        from apps.ingress.api import route_rows

        return route_rows(self)

    def status(self) -> dict[str, Any]:
        return {"listening": sorted(self.listeners), "forwarded": self.forwarded,
                "failed": self.failed, "retries": self.retries,
                "kept_alive": len(self.pool), "reused": self.pool.reused,
                "listen_errors": dict(self.listen_errors),
                "endpoints_here": len(self.running_here), "http": self.http_address,
                "http_error": self.http_error, "http_clients": self.http_clients,
                "https": self.https_address, "https_error": self.https_error,
                "certificates": self.certs.status(),
                "site_certificates": self.site_certs.overview(),
                "http_busy": self.http_busy, "http_refused": self.http_refused,
                "http_timeouts": self.http_timeouts, "http_not_found": self.http_not_found}


async def tcp_check(host: str, port: int, timeout: float = CHECK_TIMEOUT) -> bool:
    """The health check: a TCP connect that succeeds within ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


def valid_bind(text: str) -> bool:
    if text == MESH_BIND:
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
