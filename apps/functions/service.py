"""The functions service of a node (built in :mod:`meshcloud.agent.compose`): the
``functions`` table, bundle storage in the blobstore, invocation routing, the executor,
the HTTP trigger (``POST /fn/NAME`` on the ingress), API routes and CLI.

Routing (:mod:`apps.functions.routing`): a function's warm instances live on its
rendezvous top nodes (its runtime, not draining, battery and metered nodes last). Any
node accepts an invocation and sends it to the best of two of the first ``k`` of them
(``k`` grows with the calls in flight), forwarding over the mesh
(:data:`INVOKE_PROTOCOL`, one stream per invocation) when that is another node; if it
cannot be reached, the next ranked node runs it (that may be this node).

Depends on the node only for ``state``, ``transport``, ``clock``, ``node_id``,
``alive_peer_ids()`` and ``datadir.path``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.functions.bucketevents import (
    EventCursor,
    Tombstone,
    deleted_event_id,
    event_id,
    tombstones_since,
)
from apps.functions.core import (
    BUCKET,
    MAX_PAYLOAD,
    OBJECT_KINDS,
    FunctionError,
    build_version,
    check_name,
    check_sha,
    check_triggers,
    current,
    deploy,
    function_json,
    next_version,
    rollback,
    trigger_denied,
    trigger_matches,
    trigger_parts,
    unused_bundles,
    with_new_key,
    with_schedule,
)
from apps.functions.cron import parse_cron
from apps.functions.executor import Executor, InvokeFailed
from apps.functions.messages import (
    FN_LEASE_PROTOCOL,
    INVOKE_PROTOCOL,
    LOGS_PROTOCOL,
    SCHEDULE_LEASE,
    InvokeReply,
    InvokeRequest,
    LogsReply,
    LogsRequest,
    QueuedInvocation,
    TickRecord,
)
from apps.functions.queue import MAX_ATTEMPTS as MAX_ATTEMPTS_DONE
from apps.functions.queue import after_attempt, enqueue, invocation_id, is_due
from apps.functions.routing import Route, choose, order, spread
from apps.functions.routing import constraints as fn_constraints
from apps.functions.routing import item as route_item
from apps.functions.routing import route as route_of
from apps.functions.schedule import due_ticks, stale_ticks, tick_id
from apps.functions.secrets import FunctionSecrets, SecretsUnavailable, check_updates
from apps.functions.stats import StatsBook, merge
from apps.functions.tables import (
    FUNCTIONS,
    QUEUE,
    SECRET_KEYS,
    SECRETS,
    STATS,
    TICKS,
    all_functions,
    node_stats,
    queued,
    recorded_ticks,
)
from apps.ingress.targets import HostHandler, HostRequest, HostResponse
from apps.sites.storage import BlobStorage
from meshcloud.clock import next_tick
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.kit.service import ServiceBase
from meshcloud.placement import NodeInfo, rank

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

TICK = 1.0
"""Seconds between scale-down and retire passes."""
OPEN_TIMEOUT = 3.0
"""Seconds to open a stream to the top node before the next ranked node runs the call."""
FORWARD_SLACK = 5.0
"""Seconds a forwarding node waits beyond the function's timeout."""
SCHEDULE_EVERY = 0.25
"""Seconds between looks at the schedules by the scheduler lease holder."""
IDLE_HOUSEKEEPING = 5.0
"""Seconds between housekeeping passes while the mesh has no function (a row of
``functions`` or of the secrets tables starts one at once); TICK otherwise."""
IDLE_RECHECK = 30.0
"""With no schedule and nothing queued in the mesh, the scheduler sleeps until a row of
``functions`` or ``fn_queue`` changes, and looks again at least this often anyway."""
MARK_SAVE_MS = 30_000
"""The bucket triggers' mark (``fn-events.mark``) is rewritten when it moved this far
(ms): an idle node does not rewrite a file every second, and a restart's catch-up scan
looks at most this much further back (it already looks ``SCAN_SLACK_MS`` before it;
what it finds again is queued under the same ids)."""
MIN_LEASE_LEFT = 1.5
"""A tick starts only with at least this much of the scheduler lease left."""
LOCAL_LEASE, LOCAL_RENEW = 6.0, 1.0
"""Scheduler lease timing of the ``local`` profile (as the workloads' singletons)."""
CATCH_UP_DELAY, CATCH_UP_RETRY = 3.0, 2.0
"""Seconds before a start-up scan of the trigger buckets, and between its retries."""
FIND_TIMEOUT = 5.0
"""Seconds a bucket event waits to read its object's record (for its event id)."""
TERM_SYNC = 5.0
"""Seconds a new scheduler lease holder spends reading its peers' rows before it runs
ticks or queued invocations."""
STALE_SLACK = 5.0
"""Seconds past a tick call's timeout (and forwarding slack) before a tick left
``started`` without ``done`` counts as abandoned and runs again."""
SECRETS_WAIT = 15.0
"""Seconds an instance start waits for a function's secrets to open on this node (a
node that started moments before the deploy gets its sealed key only after its own
seal key has reached a node that can open the secrets, and the box has come back)."""
_NET = (MeshError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
        trio.EndOfChannel)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
def check_public(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FunctionError("public is true or false")
    return value


HTTP_STATUS = {"timeout": 504, "memory": 502, "crashed": 502, "error": 502,
               "not_found": 404, "bad_request": 400, "start_failed": 502,
               "unavailable": 503}


class FunctionHandler:
    """The ingress's handler for ``POST /fn/NAME`` (any host)."""

    max_body = MAX_PAYLOAD

    def __init__(self, service: FunctionService, name: str) -> None:
        self.service = service
        self.name = name

    async def respond(self, request: HostRequest) -> HostResponse:
        if request.method != "POST":
            return HostResponse(405, [(b"allow", b"POST"), (b"content-length", b"0")])
        raw = list(getattr(request, "headers", ()))
        try:
            denied = trigger_denied(self.service.get(self.name), raw)
        except MeshError as exc:
            return http_reply(InvokeReply(ok=False, code=exc.code, message=str(exc)))
        if denied is not None:
            import json

            status, why = denied
            body = json.dumps({"error": {"code": "unauthorized" if status == 401
                                         else "forbidden", "message": why}}).encode() + b"\n"
            extra = [(b"www-authenticate", b'Bearer realm="fn"')] if status == 401 else []
            return HostResponse(status, [(b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode()),
                                         *extra], body)
        headers = {k.lower(): v for k, v in raw}
        if headers.get(b"x-invocation-type", b"").lower() == b"event":
            import json

            try:
                dedup = headers.get(b"x-invocation-id", b"").decode("ascii")
                queued_id = self.service.enqueue(self.name, getattr(request, "body", b""),
                                                 dedup)
            except (MeshError, UnicodeDecodeError) as exc:
                return http_reply(InvokeReply(ok=False, code=getattr(exc, "code",
                                                                     "bad_request"),
                                              message=str(exc)))
            body = json.dumps({"invocation_id": queued_id}).encode() + b"\n"
            return HostResponse(202, [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())], body)
        reply = await self.service.invoke(self.name, getattr(request, "body", b""))
        return http_reply(reply)


def http_reply(reply: InvokeReply) -> HostResponse:
    if reply.ok:
        body, ctype, status = reply.body, reply.content_type, 200
    else:
        import json

        body = json.dumps({"error": {"code": reply.code, "message": reply.message}}
                          ).encode() + b"\n"
        ctype, status = "application/json", HTTP_STATUS.get(reply.code, 502)
    return HostResponse(status, [(b"content-type", ctype.encode()),
                                 (b"content-length", str(len(body)).encode())], body)


ROUTE_TTL = 0.5
"""Seconds a function's route is reused while the live set is unchanged: the placement
view (every member's capacity and offer) costs more than a warm call itself."""


class FunctionService(ServiceBase):
    name = "functions"
    events: tuple[str, ...] = ()

    def __init__(self, node: NodeContext, blobs: Any, workloads: Any = None) -> None:
        from apps.runtimes.homes import default_homes, ensure_root_dir
        from apps.runtimes.users import UidAllocator, can_switch_user

        self.node = node
        self.state = node.state
        self.storage = BlobStorage(blobs, bucket=BUCKET)
        self.state.open_table(FUNCTIONS)
        self.state.open_table(TICKS)
        self.state.open_table(QUEUE)
        self.state.open_table(STATS)
        self.state.open_table(SECRETS)
        self.state.open_table(SECRET_KEYS)
        self.secrets = self._secrets_of(node)
        self._secret_marks: dict[str, tuple[bytes, bytes]] = {}
        self.stats = StatsBook()
        self._instances: dict[str, int] = {}
        self._prepared: dict[str, tuple[int, str, str]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._outstanding: dict[str, dict[bytes, int]] = {}
        """Calls in flight per function and node, as this node sees them (the calls it
        routes, and the forwarded calls it runs for others)."""
        self._routes: dict[str, tuple[tuple[str, bool, frozenset[bytes]], float, Route]] = {}
        """Each function's route, reused for :data:`ROUTE_TTL` while the live set holds."""
        self._rng = random.Random()
        data_dir = Path(node.datadir.path)
        self.switch_users = can_switch_user()
        self.root = (default_homes(data_dir) / "functions" if self.switch_users
                     else data_dir / "functions")
        if self.switch_users:
            ensure_root_dir(self.root)  # root-owned 0711: function users pass, not list
        uids = UidAllocator(data_dir)

        def identity(name: str) -> tuple[int, int] | None:
            if not self.switch_users:
                return None
            base = uids.base_for(f"fn:{name}")
            return base, base

        self.workloads = workloads

        def podman() -> Any:
            runtimes = getattr(self.workloads, "runtimes", None) or {}
            return runtimes.get("podman")

        self.executor = Executor(self.root, self._read_bundle, identity, containers=podman)
        self.executor.secret_env = self.secret_values
        self.forwarded = 0
        self.served_remote = 0
        self._prewarmed: set[tuple[str, int]] = set()
        from apps.leases import LEASE_DURATION, RENEW_EVERY
        from apps.workloads.leasing import LeaseService

        local = getattr(getattr(node, "config", None), "profile", "") == "local"
        self.leases = LeaseService(node.node_id, node.transport, self.known_nodes,
                                   duration=LOCAL_LEASE if local else LEASE_DURATION,
                                   renew_every=LOCAL_RENEW if local else RENEW_EVERY,
                                   protocol=FN_LEASE_PROTOCOL)
        self.ticks_run = 0
        self._ticks_running: set[tuple[str, int]] = set()
        self._caught_up_term = self._catching_up_term = 0
        self._cursor = EventCursor()
        self._event_feed: Any = None
        self._nursery: trio.Nursery | None = None
        self._saved_mark: int | None = None
        self.scheduler_idle_waits = 0
        """Times the scheduler found nothing to do and slept until a row changed."""
        self.caught_up = 0
        self.scans_done = 0
        """Bucket events queued by catch-up scans (status)."""
        self.scheduler_term = 0
        """The scheduler lease's term while this node holds it (else 0; status only)."""

    @staticmethod
    def _secrets_of(node: Any) -> FunctionSecrets:
        """Secrets sealed to the node keys ``ingress_keys`` publishes (the ingress
        service publishes this node's)."""
        from apps.ingress.tables import INGRESS_KEYS, seal_keys
        from meshcloud.kit.sealed import node_sealing

        return FunctionSecrets(node.state, *node_sealing(node, INGRESS_KEYS, seal_keys))

    async def secret_values(self, name: str) -> dict[str, str]:
        """The secrets of ``name`` for its instances; waits a little for the sealed key
        of a secret set moments ago (its rows may replicate after the function's)."""
        def expected() -> bool:
            record = self.state.get(FUNCTIONS.name, name)
            row = self.secrets.row(name)
            return not (record is not None and record.secrets_key
                        and (row is None or row.key_id != record.secrets_key))

        with trio.move_on_after(SECRETS_WAIT):
            while True:
                try:
                    if expected():
                        return self.secrets.values(name)
                except SecretsUnavailable:
                    pass
                await trio.sleep(0.1)
        if not expected():
            raise SecretsUnavailable(f"{name}'s secrets have not reached this node yet")
        return self.secrets.values(name)

    def set_secrets(self, name: str, body: Any) -> dict[str, Any]:
        """``{"set": {K: V}, "remove": [K]}`` → the names after (values never leave)."""
        check_name(name)
        if not isinstance(body, dict):
            raise FunctionError('secrets are {"set": {NAME: value}, "remove": [NAME]}')
        set_, remove = check_updates(body.get("set"), body.get("remove"))
        names = self.secrets.update(name, set_, remove, self.node.clock.wall_ms())
        record = self.state.get(FUNCTIONS.name, name)
        row = self.secrets.row(name)
        if record is not None and row is not None and record.secrets_key != row.key_id:
            self.state.put(FUNCTIONS.name, name, replace(record, secrets_key=row.key_id))
        return {"name": name, "secrets": names}

    # --- storage ---------------------------------------------------------------------------

    async def _read_bundle(self, key: str) -> bytes:
        record = await self.storage.handle(key)
        return b"".join([piece async for piece in self.storage.read(record, 0,
                                                                    int(record.size))])

    async def bundle_size(self, sha256: str) -> int | None:
        from apps.functions.core import bundle_key
        from blobstore.s3.errors import NoSuchBucket

        try:
            return await self.storage.size_of(bundle_key(check_sha(sha256)))
        except NoSuchBucket:
            return None

    async def upload(self, sha256: str, size: int, body: AsyncIterator[bytes]) -> int:
        """Store a bundle under its digest; refused (nothing stored) unless the bytes
        hash to ``sha256``."""
        from apps.functions.core import MAX_BUNDLE, bundle_key

        key = bundle_key(check_sha(sha256))
        if not 0 < size <= MAX_BUNDLE:
            raise FunctionError(f"a bundle is 1 byte to {MAX_BUNDLE >> 20} MiB")
        await self.storage.ensure_bucket()
        h = hashlib.sha256()
        seen = 0

        async def hashed() -> AsyncIterator[bytes]:
            nonlocal seen
            async for piece in body:
                seen += len(piece)
                if seen > size:
                    raise FunctionError("the bundle is longer than its Content-Length")
                h.update(piece)
                yield piece

        def check() -> None:
            if seen != size or h.hexdigest() != sha256:
                raise FunctionError("the uploaded bytes do not match the bundle's SHA-256")

        await self.storage.put(key, hashed(), size=size, content_type="application/x-tar",
                               check=check)
        return size

    # --- versions --------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        record = self.state.get(FUNCTIONS.name, check_name(name))
        if record is None:
            raise NotFoundError(f"no function {name!r}")
        return record

    def overview(self) -> list[dict[str, Any]]:
        return [self.describe(r) for _, r in sorted(all_functions(self.state).items())]

    def describe(self, record: Any) -> dict[str, Any]:
        """A function's JSON with its metrics over the mesh (``stats``) and the names
        of its secrets (never their values)."""
        return {**function_json(record), "secrets": self.secrets.names(record.name),
                "stats": merge(node_stats(self.state, record.name))}

    async def commit(self, name: str, spec: Any) -> dict[str, Any]:
        check_name(name)
        if isinstance(spec, dict) and spec.get("image"):
            size = 0
        else:
            digest = check_sha(spec.get("sha256") if isinstance(spec, dict) else None)
            found = await self.bundle_size(digest)
            if found is None:
                raise FunctionError(f"bundle {digest[:12]} is not uploaded")
            size = found
        old = self.state.get(FUNCTIONS.name, name)
        version = build_version(spec, version=next_version(old), size=size,
                                now_ms=self.node.clock.wall_ms())
        record = deploy(old, name, version)
        if "on_object" in spec:
            record = replace(record, on_object=check_triggers(spec["on_object"]))
        if "schedule" in spec:
            record = with_schedule(record, spec["schedule"], self.node.clock.wall_ms())
        if "public" in spec:
            record = replace(record, public=check_public(spec["public"]))
        secrets_row = self.secrets.row(name)
        if secrets_row is not None:
            record = replace(record, secrets_key=secrets_row.key_id)
        self.state.put(FUNCTIONS.name, name, record)
        return function_json(record)

    async def set_schedule(self, name: str, schedule: Any) -> dict[str, Any]:
        record = with_schedule(self.get(name), schedule, self.node.clock.wall_ms())
        self.state.put(FUNCTIONS.name, name, record)
        return function_json(record)

    def new_key(self, name: str, replace_all: bool = False) -> dict[str, Any]:
        """A new key for ``POST /fn/NAME`` (returned once: only its hash is kept)."""
        key = "fk_" + secrets.token_urlsafe(24)
        record = with_new_key(self.get(name), key, replace_all=replace_all)
        self.state.put(FUNCTIONS.name, name, record)
        return {"name": name, "key": key, "keys": len(record.keys), "public": record.public}

    def set_access(self, name: str, public: Any, revoke_keys: bool = False
                   ) -> dict[str, Any]:
        record = self.get(name)
        if public is not None:
            record = replace(record, public=check_public(public))
        if revoke_keys:
            record = replace(record, keys=())
        self.state.put(FUNCTIONS.name, name, record)
        return {"name": name, "public": record.public, "keys": len(record.keys)}

    async def rollback(self, name: str, to: int | None) -> dict[str, Any]:
        record = rollback(self.get(name), to)
        self.state.put(FUNCTIONS.name, name, record)
        return function_json(record)

    async def remove(self, name: str) -> dict[str, Any]:
        record = self.get(name)
        self.state.delete(FUNCTIONS.name, name)
        for node in node_stats(self.state, name):
            self.state.delete(STATS.name, (name, node))
        self.secrets.remove_all(name)
        self.stats.forget(name)
        others = [r for r in all_functions(self.state).values() if r.name != name]
        removed = 0
        for key in unused_bundles(others, record):
            try:
                await self.storage.delete(key)
                removed += 1
            except Exception as exc:  # the record is gone; a stray bundle is harmless
                log.warning("deleting bundle %s failed: %s", key, exc)
        return {"name": name, "versions": len(record.versions), "bundles_deleted": removed}

    # --- invocation ------------------------------------------------------------------------

    def route(self, name: str) -> Route:
        """Where ``name``'s calls go (:mod:`apps.functions.routing`): its rendezvous top
        nodes among the live nodes that offer its runtime (podman for an image), not
        draining, battery and metered nodes last; every live node when no offer says
        anything yet (a mesh still replicating its ``offers``)."""
        alive = set(self.node.alive_peer_ids()) | {self.node.node_id}
        record = self.state.get(FUNCTIONS.name, name)
        image = record is not None and any(v.image for v in record.versions
                                           if v.version == record.current)
        key = (name, image, frozenset(alive))
        now = trio.current_time()
        cached = self._routes.get(name)
        if cached is not None and cached[0] == key and now - cached[1] < ROUTE_TTL:
            return cached[2]
        found = self._route(name, image, alive)
        self._routes[name] = (key, now, found)
        return found

    def _route(self, name: str, image: bool, alive: set[bytes]) -> Route:
        view_of = getattr(self.workloads, "view", None)
        view: list[NodeInfo] = []
        if callable(view_of):
            try:
                view = [m for m in view_of() if m.node_id in alive]
            except Exception:  # the placement view is an input, never a reason to fail
                log.exception("placement view for %s failed", name)
        found = route_of(view, name, fn_constraints(image))
        if found.candidates:
            return found
        plain = tuple(rank(alive, route_item(name)))
        return Route(plain[:1], plain)

    def ranked(self, name: str) -> list[bytes]:
        """The nodes that may run ``name``, best first."""
        return list(self.route(name).ranking)

    def _outstanding_of(self, name: str) -> dict[bytes, int]:
        return self._outstanding.setdefault(name, {})

    async def invoke(self, name: str, payload: bytes, request_id: str = "") -> InvokeReply:
        """Run ``name`` with ``payload`` on one of its top nodes (the best of two of the
        first ``k``, ``k`` growing with the calls in flight); every failure is an
        ``InvokeReply`` with a code and a message, never a hang."""
        request_id = request_id or secrets.token_hex(8)
        try:
            check_name(name)
            if len(payload) > MAX_PAYLOAD:
                raise FunctionError(f"a payload is at most {MAX_PAYLOAD >> 20} MiB")
            record = self.get(name)
            spec = current(record)
        except MeshError as exc:
            return InvokeReply(ok=False, code=exc.code, message=str(exc))
        found = self.route(name)
        outstanding = self._outstanding_of(name)
        k = spread(spec.concurrency, sum(outstanding.values()), len(found.candidates))
        chosen = choose(found.candidates, k, outstanding, self._rng.randrange)
        for target in order(chosen, found.ranking)[:3]:
            outstanding[target] = outstanding.get(target, 0) + 1
            try:
                if target == self.node.node_id:
                    return await self.run_local(name, spec.version, payload, request_id)
                sent = False

                def mark_sent() -> None:
                    nonlocal sent
                    sent = True

                try:
                    return await self._forward(
                        target, name, spec.version, payload, request_id,
                        spec.timeout_ms / 1000 + FORWARD_SLACK
                        + (SECRETS_WAIT if record.secrets_key else 0), mark_sent)
                except (*_NET, trio.TooSlowError) as exc:
                    log.info("forwarding %s to %s failed: %r", name, target.hex()[:12], exc)
                    if sent:  # it may have run there: not run twice, the caller decides
                        return InvokeReply(
                            ok=False, code="unavailable", node=target,
                            message=f"node {target.hex()[:12]} running {name} went away "
                                    f"during the invocation ({type(exc).__name__}); it may "
                                    "or may not have run")
            finally:
                left = outstanding.get(target, 1) - 1
                if left > 0:
                    outstanding[target] = left
                else:
                    outstanding.pop(target, None)
        return await self.run_local(name, spec.version, payload, request_id)

    async def _forward(self, target: bytes, name: str, version: int, payload: bytes,
                       request_id: str, limit: float, sent: Callable[[], None]
                       ) -> InvokeReply:
        self.forwarded += 1
        with trio.fail_after(OPEN_TIMEOUT):
            stream = await self.node.transport.open_stream(target, INVOKE_PROTOCOL)
        try:
            with trio.fail_after(limit):
                sent()
                await stream.send(encode_message(InvokeRequest(
                    name=name, version=version, request_id=request_id, payload=payload)))
                return decode_message(await stream.receive(), InvokeReply)
        finally:
            with trio.move_on_after(1):
                await stream.close()

    async def run_local(self, name: str, version: int, payload: bytes, request_id: str
                        ) -> InvokeReply:
        started = trio.current_time()
        reply = await self._run_local(name, version, payload, request_id)
        if reply.code != "not_found":
            self.stats.record(name, request_id=request_id, at_ms=self.node.clock.wall_ms(),
                              duration_us=int((trio.current_time() - started) * 1e6),
                              ok=reply.ok, code=reply.code, cold=reply.cold, version=version)
        return reply

    async def _run_local(self, name: str, version: int, payload: bytes, request_id: str
                         ) -> InvokeReply:
        try:
            record = self.get(name)
            spec = next((v for v in record.versions if v.version == version), None)
            if spec is None:
                raise NotFoundError(f"{name} has no version {version}")
            result = await self.executor.invoke(name, spec, payload, request_id)
        except (InvokeFailed, MeshError) as exc:
            return InvokeReply(ok=False, code=exc.code, message=str(exc),
                               node=self.node.node_id)
        except OSError as exc:
            log.exception("running %s failed", name)
            return InvokeReply(ok=False, code="unavailable", message=f"{name}: {exc}",
                               node=self.node.node_id)
        return InvokeReply(ok=True, body=result.body, content_type=result.content_type,
                           cold=result.cold, node=self.node.node_id)

    async def _serve(self, stream: Any) -> None:
        try:
            request = decode_message(await stream.receive(), InvokeRequest)
        except _NET as exc:
            log.debug("bad invoke from %s: %r", getattr(stream, "peer", b"").hex(), exc)
            with trio.move_on_after(1):
                await stream.abort("bad invoke request")
            return
        self.served_remote += 1
        outstanding = self._outstanding_of(request.name)
        me = self.node.node_id
        outstanding[me] = outstanding.get(me, 0) + 1
        try:
            reply = await self.run_local(request.name, request.version, request.payload,
                                         request.request_id)
        except Exception:  # a bug here must not leave the caller waiting out its deadline
            log.exception("running %s for %s failed", request.name,
                          getattr(stream, "peer", b"").hex()[:12])
            reply = InvokeReply(ok=False, code="error", node=me,
                                message=f"{request.name}: the node running it failed")
        finally:
            left = outstanding.get(me, 1) - 1
            if left > 0:
                outstanding[me] = left
            else:
                outstanding.pop(me, None)
        try:
            await stream.send(encode_message(reply))
            await stream.close()
        except _NET:
            pass

    # --- logs ------------------------------------------------------------------------------

    async def logs(self, name: str, lines: int = 100, request_id: str = ""
                   ) -> dict[str, str]:
        """{node id hex: the tail of ``name``'s log there} from every live node that has
        one (instances run on the top nodes, or on another after a failover); with
        ``request_id``, only that invocation's lines."""
        return (await self.read_logs(name, lines, request_id))[0]

    async def read_logs(self, name: str, lines: int = 100, request_id: str = "",
                        offsets: dict[str, int] | None = None
                        ) -> tuple[dict[str, str], dict[str, int]]:
        """The logs of ``name`` on every live node: the tail (``lines``), or with
        ``offsets`` (node hex → byte offset, a follow) what each node's log holds past
        its offset; and each node's offset after the text returned."""
        self.get(name)
        lines = max(1, min(int(lines), 10_000))
        if request_id and not _REQUEST_ID.match(request_id):
            raise FunctionError(f"bad request id {request_id[:80]!r}")
        out: dict[str, str] = {}
        ends: dict[str, int] = {}

        async def one(node: bytes) -> None:
            offset = -1 if offsets is None else offsets.get(node.hex(), -1)
            end = 0
            if node == self.node.node_id:
                if offset >= 0:
                    text, end = self.executor.log_read(name, offset)
                else:
                    text = self.executor.log_tail(name, lines, request_id=request_id)
                    end = self.executor.log_end(name)
            else:
                try:
                    with trio.fail_after(OPEN_TIMEOUT + 2):
                        stream = await self.node.transport.open_stream(node, LOGS_PROTOCOL)
                        try:
                            await stream.send(encode_message(LogsRequest(
                                name=name, lines=lines, request_id=request_id,
                                offset=offset)))
                            reply = decode_message(await stream.receive(), LogsReply)
                            text, end = reply.text, reply.end
                        finally:
                            with trio.move_on_after(1):
                                await stream.close()
                except (*_NET, trio.TooSlowError) as exc:
                    text = f"(logs of {node.hex()[:12]} unavailable: {type(exc).__name__})\n"
                    end = offset  # unchanged: the next read asks again from there
            if text:
                out[node.hex()] = text
            if end >= 0:
                ends[node.hex()] = end

        async with trio.open_nursery() as nursery:
            for node in sorted(set(self.node.alive_peer_ids()) | {self.node.node_id}):
                nursery.start_soon(one, node)
        return dict(sorted(out.items())), dict(sorted(ends.items()))

    async def _serve_logs(self, stream: Any) -> None:
        try:
            request = decode_message(await stream.receive(), LogsRequest)
            rid = request.request_id if _REQUEST_ID.match(request.request_id) else ""
            name = check_name(request.name)
            if request.offset >= 0:
                text, end = self.executor.log_read(name, request.offset)
            else:
                text = self.executor.log_tail(name, max(1, min(request.lines, 10_000)),
                                              request_id=rid)
                end = self.executor.log_end(name)
            await stream.send(encode_message(LogsReply(text=text, end=end)))
            await stream.close()
        except _NET as exc:
            log.debug("logs request failed: %r", exc)
            with trio.move_on_after(1):
                await stream.abort("bad logs request")

    # --- plugin contract -------------------------------------------------------------------

    def lookup(self, host: str, path: str) -> HostHandler | None:
        """The ingress's host lookup: ``/fn/NAME`` on any host."""
        if not path.startswith("/fn/"):
            return None
        name = path[4:].split("?", 1)[0].rstrip("/")
        if "/" in name or not name:
            return None
        return FunctionHandler(self, name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.node.transport.serve(INVOKE_PROTOCOL, self._serve)
        self.node.transport.serve(LOGS_PROTOCOL, self._serve_logs)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                self.executor.spawn = nursery.start_soon
                await nursery.start(self.leases.run)
                nursery.start_soon(self._scheduler)
                nursery.start_soon(self._object_events)
                watch = self.state.watch(FUNCTIONS.name, SECRETS.name, SECRET_KEYS.name)
                while True:
                    watch.clear()
                    try:
                        self.housekeeping(nursery)
                    except Exception:  # housekeeping must not stop serving
                        log.exception("functions housekeeping failed")
                    if self.executor.pools or self.executor.preparing or \
                            all_functions(self.state):
                        await trio.sleep_until(next_tick(trio.current_time(), TICK))
                    else:  # no function here or in the mesh: nothing to retire or scale
                        await watch.wait(next_tick(trio.current_time(), IDLE_HOUSEKEEPING))
        finally:
            self.executor.close()

    def housekeeping(self, nursery: trio.Nursery) -> None:
        """Retire pools of versions no longer current, stop idle instances, and start
        the fork server of each current version this node is the top node of (once per
        version: the first call after a deploy then forks, it does not start Python)."""
        records = all_functions(self.state)
        live = {n: r.current for n, r in records.items()}
        self.executor.retire(live)
        self.executor.scale_down()
        self.publish_stats(records)
        self._save_mark()
        self.secrets.reseal()
        marks = {n: (r.key_id, hashlib.sha256(r.ciphertext).digest())
                 for n in self.secrets.functions() if (r := self.secrets.row(n))}
        for name in set(marks) | set(self._secret_marks):
            if marks.get(name) == self._secret_marks.get(name):
                continue
            try:
                values = self.secrets.values(name)
            except SecretsUnavailable:
                marks.pop(name, None)  # not openable here yet: look again next pass
                continue
            if self.executor.drop(name, values):  # new secrets: instances start afresh
                self._prewarmed = {k for k in self._prewarmed if k[0] != name}
        self._secret_marks = marks
        self._prewarmed &= set(live.items())
        for name, record in records.items():
            key = (name, record.current)
            if key in self._prewarmed or self.ranked(name)[0] != self.node.node_id:
                continue
            self._prewarmed.add(key)
            nursery.start_soon(self._prewarm, name, current(record))

    def publish_stats(self, records: dict[str, Any]) -> None:
        """Write this node's ``fn_stats`` row of each function whose counters or
        instance count changed since the last pass."""
        instances: dict[str, int] = {}
        for (name, _), pool in self.executor.pools.items():
            instances[name] = instances.get(name, 0) + pool.instances
        for name in set(instances) | set(self._instances):
            if instances.get(name, 0) != self._instances.get(name, 0):
                self.stats.mark(name)
        self._instances = instances
        prepared: dict[str, tuple[int, str, str]] = {}
        for name, record in records.items():
            state = self.executor.preparing.get((name, record.current))
            if state is not None:
                prepared[name] = (record.current, *state)
            if prepared.get(name) != self._prepared.get(name):
                self.stats.mark(name)
        self._prepared = prepared
        for name in self.stats.dirty():
            if name not in records:
                self.stats.forget(name)
                continue
            self.state.put(STATS.name, (name, self.node.node_id), self.stats.row(
                name, instances=instances.get(name, 0), now_ms=self.node.clock.wall_ms(),
                prepared=prepared.get(name, (0, "", ""))))

    async def _prewarm(self, name: str, spec: Any) -> None:
        try:
            pool = await self.executor.pool(name, spec)
            await pool.start()
        except (MeshError, OSError) as exc:
            log.warning("function %s v%d not started ahead: %s", name, spec.version, exc)

    # --- asynchronous invocations ---------------------------------------------------------

    def enqueue(self, name: str, payload: bytes, dedup: str = "") -> str:
        """Queue an invocation (replicated); returns its id. The same dedup id again
        queues nothing new."""
        self.get(name)
        ident = invocation_id(dedup)
        if self.state.get(QUEUE.name, (name, ident)) is None:
            self.state.put(QUEUE.name, (name, ident),
                           enqueue(payload, self.node.clock.wall_ms()))
        return ident

    def invocations(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        self.get(name)
        rows = sorted(queued(self.state, name), key=lambda r: r[2].created_ms)[-limit:]
        return [{"id": ident, "state": r.state, "attempts": r.attempts,
                 "created_ms": r.created_ms, "updated_ms": r.updated_ms,
                 "message": r.message} for _, ident, r in rows]

    async def _object_events(self) -> None:
        """Bucket triggers: an object created or deleted through this node (the node
        that committed it emits the event) queues an asynchronous invocation of each
        function whose trigger matches, with the event id as dedup id. Created events
        and deleted events are at least once (:mod:`apps.functions.bucketevents`): after a
        restart or a gap in the feed, objects modified or deleted since the mark are
        queued again (same ids)."""
        events = self.node.events.subscribe()
        latest = self.node.events.recent(1)  # the last event before the subscription
        token = self._cursor.start(self._read_mark(), self.node.clock.wall_ms(),
                                   int(latest[-1].get("seq") or 0) if latest else 0)
        async with trio.open_nursery() as nursery:
            self._event_feed, self._nursery = events, nursery
            if token is not None:
                nursery.start_soon(self._catch_up, token, CATCH_UP_DELAY)
            async for event in events:
                token = self._cursor.received(int(event.get("seq") or 0))
                if token is not None:
                    log.warning("bucket triggers missed events before seq %s: scanning",
                                event.get("seq"))
                    nursery.start_soon(self._catch_up, token, 0.0)
                try:
                    kind = OBJECT_KINDS.get(event.get("kind", ""))
                    if kind is not None:
                        await self._object_event(kind, event)
                except Exception:  # one bad event must not stop the triggers
                    log.exception("bucket trigger failed for %r", event)
                finally:
                    at = event.get("at")  # the feed's stamp (wall ms); 0 if a service's
                    # own facts shadowed it (then the mark just does not move)
                    self._cursor.handled(at if isinstance(at, int) else 0)

    def _mark_path(self) -> Path:
        return Path(self.node.datadir.path) / "fn-events.mark"

    def _read_mark(self) -> int | None:
        """The stored mark; None on a node that never ran bucket triggers; an
        unreadable one means "scan the last ten minutes"."""
        try:
            return int(self._mark_path().read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return self.node.clock.wall_ms() - 600_000

    def _save_mark(self) -> None:
        feed = self._event_feed
        if feed is not None and feed.statistics().current_buffer_used == 0:
            latest = self.node.events.recent(1)
            token = self._cursor.idle(self.node.clock.wall_ms(),
                                      int(latest[-1].get("seq") or 0) if latest else 0)
            if token is not None and self._nursery is not None:
                log.warning("bucket triggers missed events: scanning")
                self._nursery.start_soon(self._catch_up, token, 0.0)
        if feed is None or self._cursor.mark_ms == self._saved_mark:
            return
        if self._saved_mark is not None and \
                0 <= self._cursor.mark_ms - self._saved_mark < MARK_SAVE_MS:
            return
        path = self._mark_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(self._cursor.mark_ms))
        tmp.replace(path)
        self._saved_mark = self._cursor.mark_ms

    async def _catch_up(self, token: int, delay: float) -> None:
        """Queue the created and deleted events of objects modified or deleted since the
        scan's start (their ids are the live events', so nothing queued already is queued
        again); retried until it succeeds, the mark held meanwhile."""
        await trio.sleep(delay)  # let the queue rows of the mesh replicate here first
        since_ms = self._cursor.scans.get(token, 0)
        while True:
            try:
                found = await self._scan_objects(since_ms)
                break
            except Exception as exc:  # storage not up yet, a bucket listing failed
                log.warning("bucket trigger catch-up failed, retrying: %r", exc)
                await trio.sleep(CATCH_UP_RETRY)
        if found:
            log.info("bucket trigger catch-up queued %d event(s)", found)
        self.caught_up += found
        self.scans_done += 1
        self._cursor.scanned(token)

    async def _scan_objects(self, since_ms: int) -> int:
        from blobstore.bucketlist import list_bucket
        from blobstore.s3.errors import NoSuchBucket

        parts = [(kind, bucket, prefix) for r in all_functions(self.state).values()
                 for kind, bucket, prefix in trigger_parts(r.on_object) if bucket != BUCKET]
        wanted = {(bucket, prefix) for kind, bucket, prefix in parts if kind == "created"}
        deletes = {(bucket, prefix) for kind, bucket, prefix in parts if kind == "deleted"}
        if not wanted and not deletes:
            return 0
        objects = getattr(self.storage.blobs, "objects", None)
        if objects is None:
            raise MeshError("this node's storage service is not running")
        queued_now = 0
        for bucket_name, prefix in sorted(deletes):
            try:
                bucket = objects.bucket(bucket_name)
            except NoSuchBucket:
                continue
            for tomb in await self._tombstones(objects.index, bucket.bucket_id, prefix,
                                               since_ms):
                queued_now += self._queue_deleted(bucket_name, tomb)
        for bucket_name, prefix in sorted(wanted):
            try:
                bucket = objects.bucket(bucket_name)
            except NoSuchBucket:
                continue
            after = None
            while True:
                page = await list_bucket(objects.index, bucket.bucket_id, prefix=prefix,
                                         after=after)
                for key, entry in page.contents:
                    if entry.last_modified * 1000 + 1 < since_ms:
                        continue
                    record = await objects.find(bucket_name, key)
                    if record is not None:
                        queued_now += self._queue_created(bucket_name, key, record)
                if not page.is_truncated or page.last is None:
                    break
                after = page.last
        return queued_now

    @staticmethod
    async def _tombstones(index: Any, bucket_id: bytes, prefix: str,
                          since_ms: int) -> list[Tombstone]:
        """The deletes under ``prefix`` since ``since_ms``: raw index rows of the bucket
        (tombstones included), paged from the prefix's first possible key."""
        from blobstore.records import OBJECTS
        from blobstore.sortkeys import scan_start
        from meshcloud.state.keys import encode_key, prefix_end

        schema = index.state.core.table(OBJECTS.name).schema
        low = encode_key((bucket_id, scan_start(prefix)))
        high = prefix_end(encode_key((bucket_id,)))
        out: list[Tombstone] = []
        while True:
            found, truncated = await index.scan(OBJECTS.name, (bucket_id,), low, high)
            rows = [(schema.key_from_bytes(f.key)[1], f.entry.ts, f.value is None)
                    for f in found]
            tombs, past = tombstones_since(rows, prefix, since_ms)
            out.extend(tombs)
            if past or not truncated or not found:
                return out
            low = found[-1].key + b"\x00"

    def _queue_deleted(self, bucket: str, tomb: Tombstone) -> int:
        """Queue the deleted event of one tombstone for each matching function (the same
        id as its live event); how many rows were new."""
        import json

        ident = deleted_event_id(bucket, tomb.key, tomb.ts)
        body = json.dumps({"type": "object.deleted", "event_id": ident, "bucket": bucket,
                           "key": tomb.key, "size": None, "etag": None,
                           "time_ms": tomb.time_ms}).encode()
        new = 0
        for function in all_functions(self.state).values():
            if function.on_object and trigger_matches(function.on_object, "deleted",
                                                      bucket, tomb.key):
                if self.state.get(QUEUE.name, (function.name, ident)) is None:
                    new += 1
                self.enqueue(function.name, body, ident)
        return new

    def _queue_created(self, bucket: str, key: str, record: Any) -> int:
        """Queue the created event of one object for each matching function (the
        same id as its live event); how many rows were new."""
        import json

        ident = event_id("created", bucket, key, record.manifest.object_id.hex())
        body = json.dumps({"type": "object.created", "event_id": ident, "bucket": bucket,
                           "key": key, "size": int(record.size), "etag": record.etag,
                           "time_ms": int(record.modified_ms)}).encode()
        new = 0
        for function in all_functions(self.state).values():
            if function.on_object and trigger_matches(function.on_object, "created",
                                                      bucket, key):
                if self.state.get(QUEUE.name, (function.name, ident)) is None:
                    new += 1
                self.enqueue(function.name, body, ident)
        return new

    def _bucket_names(self) -> dict[str, str]:
        from blobstore.records import BUCKETS

        try:
            return {r.bucket_id.hex(): str(k[0]) for k, r in self.state.scan(BUCKETS.name)
                    if r is not None and k}
        except Exception:  # no storage tables on this node
            return {}

    async def _object_event(self, kind: str, event: dict[str, Any]) -> None:
        import json
        import os

        targets = [r for r in all_functions(self.state).values()
                   if r.on_object and r.name]
        if not targets:
            return
        bucket = self._bucket_names().get(str(event.get("bucket", "")))
        key = str(event.get("key", ""))
        if bucket is None or bucket == BUCKET:
            return
        matching = [r for r in targets if trigger_matches(r.on_object, kind, bucket, key)]
        if not matching:
            return
        if os.environ.get("MESHCLOUD_FN_FAULT") == "exit-before-enqueue":
            os._exit(137)  # fault point (tests): die between the commit and the queue row
        if kind == "created":
            record = None
            objects = getattr(self.storage.blobs, "objects", None)
            if objects is not None:
                with trio.move_on_after(FIND_TIMEOUT):
                    try:
                        record = await objects.find(bucket, key)
                    except Exception as exc:  # the fallback id below still queues it
                        log.info("bucket trigger: reading %s/%s failed: %r", bucket, key,
                                 exc)
            if record is not None:
                self._queue_created(bucket, key, record)
                return
        if kind == "deleted" and isinstance(event.get("ts"), int):
            self._queue_deleted(bucket, Tombstone(key, int(event["ts"])))
            return
        ident = "ev-" + hashlib.sha256(
            f"{event.get('node')}|{event.get('seq')}|{event.get('at')}|{kind}|{bucket}|"
            f"{key}".encode()).hexdigest()[:24]
        body = json.dumps({"type": f"object.{kind}", "event_id": ident, "bucket": bucket,
                           "key": key, "size": event.get("size"), "etag": event.get("etag"),
                           "time_ms": event.get("at")}).encode()
        for function in matching:
            self.enqueue(function.name, body, ident)

    def _queue_pass(self, nursery: trio.Nursery) -> None:
        now_ms = self.node.clock.wall_ms()
        for name, ident, row in queued(self.state):
            if (name, ident) in self._in_flight or not is_due(row, now_ms):
                continue
            self._in_flight.add((name, ident))
            nursery.start_soon(self._run_queued, name, ident, row)

    async def _run_queued(self, name: str, ident: str, row: QueuedInvocation) -> None:
        try:
            if self.state.get(FUNCTIONS.name, name) is None:
                reply = InvokeReply(ok=False, code="not_found", message=f"no function {name}")
                row = replace(row, attempts=MAX_ATTEMPTS_DONE - 1)
            else:
                reply = await self.invoke(name, row.payload, request_id=ident)
            if not reply.ok:
                log.info("async invocation %s of %s failed: %s", ident, name, reply.code)
            self.state.put(QUEUE.name, (name, ident), after_attempt(
                row, reply.ok, f"{reply.code}: {reply.message}", self.node.clock.wall_ms()))
        finally:
            self._in_flight.discard((name, ident))

    # --- schedules -------------------------------------------------------------------------

    def known_nodes(self) -> list[bytes]:
        """Every node that ever ran the workload service (a set that does not move when a
        node merely looks dead): the scheduler lease's granters are chosen from it."""
        from apps.workloads.offers import all_offers

        return sorted(set(all_offers(self.state)) | {self.node.node_id})

    def _scheduled(self) -> dict[str, Any]:
        return {n: r for n, r in all_functions(self.state).items() if r.schedule}

    async def _scheduler(self) -> None:
        """One node of the mesh (the first live node by rank) holds the scheduler lease
        and runs each due tick once: a ``started`` row before, a ``done`` row after."""
        watch = self.state.watch(FUNCTIONS.name, QUEUE.name)
        async with trio.open_nursery() as nursery:
            while True:
                watch.clear()  # a change from here on means another pass
                idle = False
                try:
                    idle = self._schedule_pass(nursery)
                except Exception:  # a bad row must not stop the schedules
                    log.exception("functions scheduler pass failed")
                if idle:  # nothing scheduled or queued anywhere: wait for a row
                    self.scheduler_idle_waits += 1
                    await watch.wait(trio.current_time() + IDLE_RECHECK)
                else:
                    await trio.sleep(SCHEDULE_EVERY)

    def _schedule_pass(self, nursery: trio.Nursery) -> bool:
        """One look at the schedules and the queue; True when there is nothing to do
        until a ``functions`` or ``fn_queue`` row changes (no schedule, nothing queued,
        no lease held)."""
        scheduled = self._scheduled()
        busy = bool(scheduled) or any(r.state == "queued" for _, _, r in queued(self.state))
        if busy:
            alive = set(self.node.alive_peer_ids()) | {self.node.node_id}
            top = rank(alive, SCHEDULE_LEASE.encode())[0]
            self.leases.want({SCHEDULE_LEASE} if top == self.node.node_id else set())
        else:
            self.leases.want(set())
        held = self.leases.leases().get(SCHEDULE_LEASE)
        self.scheduler_term = held.term if held is not None else 0
        if held is None or held.valid_until - trio.current_time() < MIN_LEASE_LEFT:
            # only the lease holder looks for due ticks and queued invocations
            return not busy and held is None and not self._ticks_running
        if self._caught_up_term != held.term:
            if self._catching_up_term != held.term:  # a new term: read the rows first
                self._catching_up_term = held.term
                nursery.start_soon(self._sync_for_term, held.term)
            return False
        self._queue_pass(nursery)
        for name, record in sorted(scheduled.items()):
            try:
                cron = parse_cron(record.schedule)
            except MeshError as exc:
                log.warning("function %s: %s", name, exc)
                continue
            now_ms = self.node.clock.wall_ms()
            recorded = recorded_ticks(self.state, name)
            due = due_ticks(cron, since_s=record.schedule_since_ms // 1000,
                            now_s=now_ms // 1000, recorded=recorded)
            timeout_ms = current(record).timeout_ms
            stale = stale_ticks(recorded, now_ms=now_ms,
                                after_ms=timeout_ms + int((FORWARD_SLACK + STALE_SLACK) * 1000),
                                running={t for n, t in self._ticks_running if n == name})
            for tick, rerun in sorted([(t, True) for t in stale] + [(t, False) for t in due]):
                lease = self.leases.leases().get(SCHEDULE_LEASE)
                if lease is None or lease.valid_until - trio.current_time() < MIN_LEASE_LEFT:
                    return False
                self.state.put(TICKS.name, (name, tick), TickRecord(
                    state="started", term=lease.term, node=self.node.node_id,
                    at_ms=self.node.clock.wall_ms()))
                self._ticks_running.add((name, tick))
                nursery.start_soon(self._run_tick, name, tick, lease.term, rerun)
        return False

    async def _sync_for_term(self, term: int) -> None:
        """Before a new holder runs anything, one anti-entropy session with each live
        peer (at most :data:`TERM_SYNC` s): the ``fn_ticks`` and ``fn_queue`` rows the
        previous holder wrote reach this node first, so it does not run them again."""
        peers = sorted(set(self.node.alive_peer_ids()) - {self.node.node_id})
        with trio.move_on_after(TERM_SYNC):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._sync_one, peer)
        self._caught_up_term = term

    async def _sync_one(self, peer: bytes) -> None:
        try:
            await self.state.sync_with(peer)
        except (*_NET, trio.TooSlowError) as exc:
            log.info("scheduler sync with %s failed: %r", peer.hex()[:12], exc)

    async def _run_tick(self, name: str, tick: int, term: int, rerun: bool = False) -> None:
        import json
        from datetime import datetime

        self.ticks_run += 1
        ident = tick_id(name, tick)
        event = {"type": "schedule", "function": name, "tick": tick,
                 "time": datetime.fromtimestamp(tick, UTC).isoformat(), "tick_id": ident,
                 "rerun": rerun}
        try:
            reply = await self.invoke(name, json.dumps(event).encode(), request_id=ident)
            if not reply.ok:
                log.warning("scheduled tick %d of %s failed: %s: %s", tick, name,
                            reply.code, reply.message)
            self.state.put(TICKS.name, (name, tick), TickRecord(
                state="done", term=term, node=self.node.node_id,
                at_ms=self.node.clock.wall_ms(), ok=reply.ok,
                message="" if reply.ok else f"{reply.code}: {reply.message}"[:500]))
        finally:
            self._ticks_running.discard((name, tick))

    def ticks(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        self.get(name)
        rows = sorted(recorded_ticks(self.state, name).items())[-limit:]
        return [{"tick": t, "state": r.state, "term": r.term, "node": r.node.hex(),
                 "at_ms": r.at_ms, "ok": r.ok, "message": r.message} for t, r in rows]

    def tables(self) -> tuple[Any, ...]:
        return (FUNCTIONS, TICKS, QUEUE, STATS, SECRETS, SECRET_KEYS)

    def ui_routes(self, ui: Any) -> list[Any]:
        from apps.functions.ui import routes

        return routes(ui, self)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("functions", "Functions", "/ui/functions", True)]

    def api_routes(self) -> list[Any]:
        from apps.functions.api import routes

        return routes(self)

    def status(self) -> dict[str, Any]:
        return {"functions": len(all_functions(self.state)), "forwarded": self.forwarded,
                "served_remote": self.served_remote, "ticks_run": self.ticks_run,
                "scheduler": self.scheduler_term > 0, "pools": self.executor.stats(),
                "events_caught_up": self.caught_up, "events_scans": self.scans_done}
