"""Anti-entropy: make two replicas equal by comparing Merkle trees (sans-IO).

Model: Garage ``src/table/sync.rs``, extended to push *and* pull in one session (Garage
only pushes and counts on the peer's own rounds to get the other half). One session is
a strict request/reply exchange on one stream, initiator side :class:`SyncSession`,
responder side :func:`respond`.

**Initiator** (``SyncSession``)

1. ``SyncHello``: for each planned table, the hash of our node at each planned prefix
   (``b""`` = the table root for full-copy tables; ``bytes([p])`` = partition roots for
   sharded ones). The reply names the prefixes whose hashes differ.
2. For each differing prefix P (depth first), ``SyncNodes`` fetches the peer's node at P (up to
   ``sync_nodes_per_request`` at once) and :meth:`SyncSession._compare` compares it with
   ours: where both sides have children, the children whose hashes differ are compared
   next (a leaf on one side counts as the child its path leads to); where neither side
   has an intermediate node, our leaf (if any) is **pushed** and the peer's leaf (if any)
   is **pulled**.
3. ``SyncPush`` sends our entries (up to ``sync_batch_bytes`` per message); ``SyncGet``
   fetches the peer's (the reply says how many of the asked keys it covered).

Work per session is O(differences * depth), messages are bounded, and the session stops
after ``sync_max_requests`` (the next round continues). Both sides merge with the CRDT
join, so after a complete session both hold the join of their contents: identical
entries, identical Merkle trees (the tree is canonical, :mod:`.merkle`).

**Responder** (:func:`respond`): stateless, answers from its tables; a request it cannot
serve (unknown table, malformed entries) gets ``SyncRefused`` and changes nothing.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from meshcloud.errors import CodecError, LocalProtocolError, RemoteProtocolError
from meshcloud.state.config import StateConfig
from meshcloud.state.merkle import (
    EMPTY,
    INTERMEDIATE,
    LEAF,
    PATH_BYTES,
    blake,
    check_node,
    children,
    leaf_key,
)
from meshcloud.state.messages import (
    MAX_KEYS,
    MAX_PREFIX_BYTES,
    SyncEntries,
    SyncGet,
    SyncHello,
    SyncHelloReply,
    SyncNodes,
    SyncNodesReply,
    SyncPush,
    SyncPushAck,
    SyncRefused,
)
from meshcloud.state.table import Change, TableCore

NodeId = bytes


class SyncState(enum.Enum):
    HELLO = "hello"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class SyncStatistics:
    requests: int = 0
    nodes_compared: int = 0
    pushed: int = 0
    pulled: int = 0
    changed: int = 0
    truncated: bool = False


@dataclass(slots=True)
class _TableWork:
    compare: deque[bytes] = field(default_factory=deque)
    push: deque[bytes] = field(default_factory=deque)
    pull: deque[bytes] = field(default_factory=deque)
    pushed: set[bytes] = field(default_factory=set)
    pulled: set[bytes] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.compare or self.push or self.pull)


class SyncSession:
    """The initiator side of one anti-entropy session with ``peer``.

    Drive it as: ``while (req := s.next_request()) is not None: s.on_reply(reply, now_ms)``
    (the state core wraps ``on_reply`` to spread what was learnt). ``plan`` maps table
    name to the Merkle prefixes to compare.
    """

    def __init__(self, peer: NodeId, tables: Mapping[str, TableCore[Any]],
                 plan: Mapping[str, list[bytes]], config: StateConfig,
                 *, started: float = 0.0, session_id: int = 0) -> None:
        self.peer = peer
        self.tables = tables
        self.plan = {name: list(prefixes) for name, prefixes in plan.items()
                     if name in tables and prefixes}
        self.config = config
        self.started = started
        self.session_id = session_id
        self.state = SyncState.HELLO
        self.stats = SyncStatistics()
        self.error: str | None = None
        self._work = {name: _TableWork() for name in self.plan}
        self._awaiting: tuple[str, str, tuple[bytes, ...]] | None = None

    @property
    def finished(self) -> bool:
        return self.state in (SyncState.DONE, SyncState.FAILED)

    # --- requests -------------------------------------------------------------------------

    def next_request(self) -> SyncHello | SyncNodes | SyncGet | SyncPush | None:
        """The next request to send, or None when the session is over."""
        if self.finished:
            return None
        if self._awaiting is not None:
            raise LocalProtocolError("the previous request has no reply yet")
        if self.state is SyncState.HELLO:
            if not self.plan:
                self.state = SyncState.DONE
                return None
            hello = SyncHello(tables={
                name: tuple(self._hello_pairs(name, prefixes))
                for name, prefixes in self.plan.items()
            })
            self._awaiting = ("hello", "", ())
            self.stats.requests += 1
            return hello
        if self.stats.requests >= self.config.sync_max_requests:
            self.stats.truncated = True
            self.state = SyncState.DONE
            return None
        for name, work in self._work.items():
            request = self._request_for(name, work)
            if request is not None:
                self.stats.requests += 1
                return request
        self.state = SyncState.DONE
        return None

    def _hello_pairs(self, name: str, prefixes: list[bytes]) -> list[tuple[bytes, bytes]]:
        table = self.tables[name]
        return table.kv.read(
            lambda txn: [(p, table.merkle.view_hash(txn, p)) for p in prefixes])

    def _request_for(self, name: str, work: _TableWork) -> SyncNodes | SyncGet | SyncPush | None:
        table = self.tables[name]
        while work.push:
            budget = self.config.sync_batch_bytes
            batch: list[bytes] = []
            while work.push and len(batch) < MAX_KEYS:
                batch.append(work.push.popleft())
            entries: list[tuple[bytes, bytes]] = []
            unsent: list[bytes] = []
            size = 0
            for key, data in table.entries_for(batch):
                if entries and size + len(key) + len(data) > budget:
                    unsent.append(key)
                    continue
                entries.append((key, data))
                size += len(key) + len(data)
            work.push.extendleft(reversed(unsent))
            if entries:
                self.stats.pushed += len(entries)
                self._awaiting = ("push", name, ())
                return SyncPush(table=name, entries=tuple(entries))
        if work.pull:
            count = min(self.config.sync_keys_per_request, MAX_KEYS)
            keys = tuple(work.pull.popleft() for _ in range(min(count, len(work.pull))))
            self._awaiting = ("get", name, keys)
            return SyncGet(table=name, keys=keys)
        if work.compare:
            count = self.config.sync_nodes_per_request
            # Depth first (the frontier is a stack): a session cut short by its request
            # budget has finished whole subtrees, and the next session skips them.
            prefixes = tuple(work.compare.pop() for _ in range(min(count, len(work.compare))))
            self._awaiting = ("nodes", name, prefixes)
            return SyncNodes(table=name, prefixes=prefixes)
        return None

    # --- replies --------------------------------------------------------------------------

    def on_reply(self, reply: Any, now_ms: int) -> list[Change]:
        """Feed the reply to the last request; returns the entries it changed here.

        A reply that does not fit the request fails the session (RemoteProtocolError)."""
        if self._awaiting is None:
            raise LocalProtocolError("no request is waiting for a reply")
        kind, name, sent = self._awaiting
        self._awaiting = None
        try:
            if isinstance(reply, SyncRefused):
                raise RemoteProtocolError(f"peer refused sync: {reply.reason}")
            if kind == "hello":
                self._on_hello(reply)
                return []
            if kind == "nodes":
                self._on_nodes(name, sent, reply)
                return []
            if kind == "get":
                return self._on_entries(name, sent, reply, now_ms)
            if not isinstance(reply, SyncPushAck) or reply.table != name:
                raise RemoteProtocolError("expected SyncPushAck")
            return []
        except (RemoteProtocolError, CodecError) as exc:
            self.fail(str(exc))
            raise

    def fail(self, reason: str) -> None:
        """The stream broke or the peer misbehaved: stop here (merged data stays)."""
        if not self.finished:
            self.state = SyncState.FAILED
            self.error = reason
        self._awaiting = None

    def _on_hello(self, reply: Any) -> None:
        if not isinstance(reply, SyncHelloReply):
            raise RemoteProtocolError("expected SyncHelloReply")
        for name, prefixes in reply.differ.items():
            planned = set(self.plan.get(name, ()))
            for prefix in prefixes:
                if prefix not in planned:
                    raise RemoteProtocolError("hello reply names a prefix we did not send")
                self._work[name].compare.append(prefix)
        self.state = SyncState.RUNNING

    def _on_nodes(self, name: str, prefixes: tuple[bytes, ...], reply: Any) -> None:
        if not isinstance(reply, SyncNodesReply) or len(reply.nodes) != len(prefixes):
            raise RemoteProtocolError("expected one node per prefix")
        table = self.tables[name]
        remote = [check_node(node) for node in reply.nodes]
        local = table.kv.read(lambda txn: [table.merkle.view(txn, p) for p in prefixes])
        work = self._work[name]
        for prefix, mine, theirs in zip(prefixes, local, remote, strict=True):
            self.stats.nodes_compared += 1
            self._compare(table, work, prefix, mine, theirs)

    def _compare(self, table: TableCore[Any], work: _TableWork, prefix: bytes,
                 mine: bytes, theirs: bytes) -> None:
        if mine == theirs:
            return
        depth = len(prefix)
        if depth < PATH_BYTES and (_kind(mine) == INTERMEDIATE
                                   or _kind(theirs) == INTERMEDIATE):
            ours = _as_children(table, mine, depth)
            other = _as_children(table, theirs, depth)
            for child in sorted(ours.keys() | other.keys(), reverse=True):
                if ours.get(child) != other.get(child):
                    work.compare.append(prefix + bytes([child]))
            return
        if _kind(mine) == LEAF:
            key = leaf_key(mine)
            if key not in work.pushed:
                work.pushed.add(key)
                work.push.append(key)
        if _kind(theirs) == LEAF:
            key = leaf_key(theirs)
            table.schema.key_from_bytes(key)  # CodecError if the peer sent garbage
            if key not in work.pulled:
                work.pulled.add(key)
                work.pull.append(key)

    def _on_entries(self, name: str, keys: tuple[bytes, ...], reply: Any,
                    now_ms: int) -> list[Change]:
        if not isinstance(reply, SyncEntries) or reply.table != name:
            raise RemoteProtocolError("expected SyncEntries")
        if reply.processed > len(keys) or (reply.processed == 0 and keys):
            raise RemoteProtocolError("SyncEntries processed no key")
        asked = set(keys[: reply.processed])
        if any(key not in asked for key, _ in reply.entries):
            raise RemoteProtocolError("SyncEntries holds a key we did not ask for")
        self._work[name].pull.extendleft(reversed(keys[reply.processed :]))
        changes = self.tables[name].merge_encoded(reply.entries, now_ms)
        self.stats.pulled += len(reply.entries)
        self.stats.changed += len(changes)
        return changes


def _kind(node: bytes) -> int:
    return node[0] if node else 0


def _as_children(table: TableCore[Any], node: bytes, depth: int) -> dict[int, bytes]:
    """Children of ``node`` seen from prefix depth ``depth``: a leaf is the one child its
    path leads to."""
    kind = _kind(node)
    if kind == INTERMEDIATE:
        return children(node)
    if kind == LEAF:
        path = table.merkle.path(leaf_key(node))
        return {path[depth]: blake(node)}
    return {}


# --- responder ------------------------------------------------------------------------


def respond(tables: Mapping[str, TableCore[Any]], request: Any, now_ms: int,
            config: StateConfig,
            holds: Callable[[str, bytes], bool] = lambda table, prefix: True,
            ) -> tuple[Any, list[Change]]:
    """Answer one sync request from our tables: (reply, entries changed here).

    ``holds(table, prefix)`` says whether we store what ``prefix`` covers (sharded tables:
    a partition we hold); prefixes we do not hold are reported equal, so a peer with
    another view does not push us partitions that are not ours."""
    try:
        return _respond(tables, request, now_ms, config, holds)
    except (CodecError, RemoteProtocolError) as exc:
        return SyncRefused(reason=str(exc)[:200]), []


def _table(tables: Mapping[str, TableCore[Any]], name: str) -> TableCore[Any]:
    table = tables.get(name)
    if table is None:
        raise RemoteProtocolError(f"no table {name!r} here")
    return table


def _respond(tables: Mapping[str, TableCore[Any]], request: Any, now_ms: int,
             config: StateConfig, holds: Callable[[str, bytes], bool],
             ) -> tuple[Any, list[Change]]:
    match request:
        case SyncHello():
            differ: dict[str, tuple[bytes, ...]] = {}
            for name, pairs in request.tables.items():
                known = tables.get(name)
                if known is None:
                    continue
                mine = known.kv.read(partial(_view_hashes, known, pairs))
                changed = tuple(p for (p, theirs), ours in zip(pairs, mine, strict=True)
                                if ours != theirs and holds(name, p))
                if changed:
                    differ[name] = changed
            return SyncHelloReply(differ=differ), []
        case SyncNodes():
            table = _table(tables, request.table)
            if any(len(p) > MAX_PREFIX_BYTES for p in request.prefixes):
                raise RemoteProtocolError("prefix too long")
            nodes = table.kv.read(
                lambda txn: tuple(table.merkle.view(txn, p) if holds(request.table, p)
                                  else EMPTY for p in request.prefixes))
            return SyncNodesReply(nodes=nodes), []
        case SyncGet():
            table = _table(tables, request.table)
            entries: list[tuple[bytes, bytes]] = []
            size = processed = 0
            found = dict(table.entries_for(request.keys))
            for key in request.keys:
                data = found.get(key)
                if data is not None:
                    if entries and size + len(key) + len(data) > config.sync_batch_bytes:
                        break
                    entries.append((key, data))
                    size += len(key) + len(data)
                processed += 1
            return SyncEntries(table=request.table, entries=tuple(entries),
                               processed=processed), []
        case SyncPush():
            table = _table(tables, request.table)
            changes = table.merge_encoded(request.entries, now_ms)
            return SyncPushAck(table=request.table, changed=len(changes)), changes
    raise RemoteProtocolError(f"{type(request).__name__} is not a sync request")


def _view_hashes(table: TableCore[Any], pairs: Iterable[tuple[bytes, bytes]],
                 txn: Any) -> list[bytes]:
    return [table.merkle.view_hash(txn, p) for p, _ in pairs]
