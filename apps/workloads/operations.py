"""What the API and CLI ask of the workload service: run, deploy, scale, stop, remove,
ps, logs and drain — every check before the one write, reads from this node's state.

A mixin of :class:`~apps.workloads.service.WorkloadService` (which provides the node, its
state, its view, its runtimes and the inventory of other nodes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from apps.runtimes.base import Runtime
from apps.workloads.admission import admission_problems
from apps.workloads.errors import SpecError, WorkloadError, WorkloadExists, WorkloadNotFound
from apps.workloads.logs import local_lines, remote_lines
from apps.workloads.messages import InventoryItem, LogsRequest
from apps.workloads.offers import all_offers
from apps.workloads.reconciler import read_claims, read_workloads
from apps.workloads.spec import MAX_REPLICAS, WorkloadSpec, parse_spec, replica_name
from apps.workloads.tables import REPLICAS, WORKLOADS, WorkloadRecord
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.placement import NodeInfo
from meshcloud.state.tables import NODES

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext


class WorkloadOperations:
    node: NodeContext
    state: Any
    runtimes: dict[str, Runtime]

    def view(self) -> list[NodeInfo]:
        raise NotImplementedError

    def poke(self) -> None:
        raise NotImplementedError

    def draining(self) -> set[bytes]:
        raise NotImplementedError

    async def inventory_of(self, node_id: bytes) -> list[InventoryItem] | None:
        raise NotImplementedError

    # --- operations (API and CLI) ---------------------------------------------------------

    def _record(self, name: str) -> WorkloadRecord:
        record = self.state.get(WORKLOADS.name, name)
        if record is None or record.kind != "service":
            raise WorkloadNotFound(f"no workload named {name!r} (see `meshcloud ps`)")
        return record

    def specs(self) -> dict[str, WorkloadSpec]:
        return {name: entry.spec for name, entry in read_workloads(self.state).items()}

    def check(self, spec: WorkloadSpec) -> list[str]:
        """Mesh-wide problems of ``spec`` (empty: it can run here)."""
        offers = all_offers(self.state)
        alive = set(getattr(self.node, "alive_peer_ids", lambda: [])()) | {self.node.node_id}
        return admission_problems(spec, self.view(), offers, self.specs(), self.machines(),
                                  unannounced=len(alive - set(offers)))

    def machines(self) -> dict[bytes, str]:
        """Node id -> the machine it runs on (host of its first advertised address)."""
        from apps.workloads.admission import machine_of_addresses

        members = getattr(self.node, "members_view", lambda: [])()
        out = {}
        for member in members:
            host = machine_of_addresses(member.get("addresses") or [])
            if host is not None:
                out[bytes.fromhex(member["id"])] = host
        return out

    def submit(self, data: Mapping[str, Any], *, replace_existing: bool) -> dict[str, Any]:
        """Create (``run``) or create-or-update (``deploy``) a workload. Every check runs
        before the one write; a refused spec changes nothing."""
        spec = parse_spec(data)
        existing = self.state.get(WORKLOADS.name, spec.name)
        if existing is not None and not replace_existing:
            raise WorkloadExists(f"workload {spec.name!r} exists: `meshcloud deploy` "
                                 "updates it, `meshcloud rm` removes it")
        problems = self.check(spec)
        if problems:
            raise SpecError(spec.name, problems)
        generation = 1
        if existing is not None:
            generation = existing.generation
            try:
                old = parse_spec(existing.spec)
                if old.runtime_hash() != spec.runtime_hash() or old.singleton != spec.singleton:
                    generation += 1
            except MeshError:
                generation += 1
        record = WorkloadRecord(kind="service", spec=spec.to_dict(), replicas=spec.replicas,
                                constraints=spec.constraints.to_dict(), generation=generation)
        self.state.put(WORKLOADS.name, spec.name, record)
        self._drop_claims_above(spec.name, spec.replicas)
        self.node.events.emit("workload.deployed", workload=spec.name,
                              replicas=spec.replicas, generation=generation)
        self.poke()
        return self.describe(spec.name)

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        record = self._record(name)
        if not 0 <= replicas <= MAX_REPLICAS:
            raise SpecError(name, [f"replicas {replicas} must be from 0 to {MAX_REPLICAS}"])
        spec = parse_spec(record.spec)
        if replicas > 0:
            if spec.singleton and replicas != 1:
                raise SpecError(name, ["a singleton has exactly one replica"])
            scaled = spec.with_replicas(replicas)
            problems = [p for p in self.check(scaled) if "node" in p]
            if problems:
                raise SpecError(name, problems)
            spec = scaled
        self.state.put(WORKLOADS.name, name, replace(
            record, spec=spec.to_dict(), replicas=replicas))
        self._drop_claims_above(name, replicas)
        self.poke()
        return self.describe(name)

    def stop(self, name: str) -> dict[str, Any]:
        record = self._record(name)
        self.state.put(WORKLOADS.name, name, replace(record, replicas=0))
        self._drop_claims_above(name, 0)
        self.poke()
        return self.describe(name)

    def start(self, name: str) -> dict[str, Any]:
        record = self._record(name)
        spec = parse_spec(record.spec)
        self.state.put(WORKLOADS.name, name, replace(record, replicas=spec.replicas))
        self.poke()
        return self.describe(name)

    def remove(self, name: str) -> None:
        self._record(name)
        self.state.delete(WORKLOADS.name, name)
        self._drop_claims_above(name, 0)
        self.node.events.emit("workload.removed", workload=name)
        self.poke()

    def _drop_claims_above(self, name: str, replicas: int) -> None:
        for key, _ in self.state.scan(REPLICAS.name, (name,)):
            if key[1] >= replicas:
                self.state.delete(REPLICAS.name, key)

    # --- reading ----------------------------------------------------------------------------

    def replica_rows(self, name: str | None = None) -> list[dict[str, Any]]:
        """``meshcloud ps``: every replica wanted or claimed, from this node's state."""
        alive = {n.node_id for n in self.view()} | set(self.node.alive_peer_ids())
        alive.add(self.node.node_id)
        workloads = read_workloads(self.state)
        claims = read_claims(self.state)
        rows = []
        for workload, entry in sorted(workloads.items()):
            if name is not None and workload != name:
                continue
            indices = set(range(entry.replicas)) | {i for (w, i) in claims if w == workload}
            for index in sorted(indices):
                claim = claims.get((workload, index))
                row: dict[str, Any] = {"workload": workload, "replica": index,
                                       "name": replica_name(workload, index),
                                       "wanted": index < entry.replicas}
                if claim is None:
                    row.update(node=None, node_alive=None, state="pending", restarts=0,
                               fencing=0, updated=None, message="no node has claimed it")
                else:
                    row.update(node=claim.node.hex(), node_alive=claim.node in alive,
                               state=claim.state if claim.node in alive else "node down",
                               restarts=claim.restarts, fencing=claim.fencing,
                               updated=claim.updated_ms, generation=claim.generation,
                               message=claim.message)
                rows.append(row)
        return rows

    def describe(self, name: str) -> dict[str, Any]:
        record = self._record(name)
        spec = parse_spec(record.spec)
        rows = self.replica_rows(name)
        running = sum(1 for r in rows if r["wanted"] and r["state"] == "running")
        return {"name": name, "kind": record.kind, "image": spec.image,
                "command": list(spec.command), "runtime": spec.runtime,
                "singleton": spec.singleton, "desired": record.replicas,
                "configured": spec.replicas, "stopped": record.replicas == 0,
                "running": running, "generation": record.generation,
                "spec": spec.to_dict(), "replicas": rows}

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(name) for name in sorted(read_workloads(self.state))]

    def resolve_node(self, text: str) -> bytes:
        """A node id from hex, a unique prefix, or ``self``."""
        text = text.strip().lower()
        if text in ("self", "."):
            return self.node.node_id
        known = set(all_offers(self.state)) | {k[0] for k, _ in self.state.scan(NODES.name)}
        known |= set(self.node.known_node_ids())
        matches = [n for n in known if isinstance(n, bytes) and n.hex().startswith(text)]
        if len(matches) == 1 and text:
            return matches[0]
        if not matches:
            raise NotFoundError(f"no known node id starts with {text!r}")
        raise WorkloadError(f"{text!r} matches {len(matches)} nodes; give more digits",
                            code="bad_request")

    def log_targets(self, name: str, replica: int | None) -> list[tuple[int, bytes]]:
        """(index, node) of the replicas whose logs ``meshcloud logs`` shows; raises
        before anything is streamed when there is none."""
        record = self._record(name)
        claims = {i: c.node for (w, i), c in read_claims(self.state).items() if w == name}
        if replica is not None:
            if replica not in claims:
                raise NotFoundError(f"replica {replica_name(name, replica)} is not claimed "
                                    "by any node yet")
            return [(replica, claims[replica])]
        indices = sorted(i for i in claims if i < record.replicas) or sorted(claims)
        if not indices:
            raise NotFoundError(f"no replica of {name!r} runs anywhere yet")
        return [(i, claims[i]) for i in indices]

    async def stream_logs(self, name: str, targets: list[tuple[int, bytes]], *,
                          follow: bool, tail: int | None,
                          send: trio.MemorySendChannel[str]) -> None:
        """Send the lines of ``targets`` into ``send`` (closed at the end); with several
        replicas each line starts with ``NAME-INDEX | ``."""
        prefix = len(targets) > 1

        async def pump(index: int, node_id: bytes, out: trio.MemorySendChannel[str]) -> None:
            label = f"{replica_name(name, index)} | " if prefix else ""
            async with out:
                try:
                    async for line in self._replica_lines(name, index, node_id, follow,
                                                          tail):
                        await out.send(label + line)
                except MeshError as exc:
                    await out.send(f"{label}(logs unavailable: {exc.message})")
                    claim = read_claims(self.state).get((name, index))
                    if claim is not None and claim.message:
                        await out.send(f"{label}(replica {claim.state}: {claim.message})")

        async with send, trio.open_nursery() as nursery:
            for index, node_id in targets:
                nursery.start_soon(pump, index, node_id, send.clone())

    async def _replica_lines(self, name: str, index: int, node_id: bytes, follow: bool,
                             tail: int | None) -> AsyncIterator[str]:
        request = LogsRequest(workload=name, replica=index, follow=follow, tail=tail)
        if node_id == self.node.node_id:
            lines = local_lines(self.runtimes, request)
        else:
            lines = remote_lines(self.node.transport, node_id, request)
        async for line in lines:
            yield line

    # --- drain ------------------------------------------------------------------------------

    def set_drain(self, node_id: bytes, drain: bool) -> None:
        self.state.patch(NODES.name, node_id, {"drain": drain})
        self.node.events.emit("node.drain" if drain else "node.undrain", node=node_id.hex())
        self.poke()

    async def drain_progress(self, node_id: bytes) -> dict[str, Any]:
        """How far moving everything off ``node_id`` has come; ``safe`` once nothing runs
        there (claims gone from the table, and its runtimes report nothing alive)."""
        workloads = read_workloads(self.state)
        claims = [{"workload": w, "replica": i, "state": c.state}
                  for (w, i), c in sorted(read_claims(self.state).items())
                  if c.node == node_id and w in workloads]
        items = await self.inventory_of(node_id)
        running = [] if items is None else [
            {"name": it.name, "state": it.state} for it in items
            if it.state in ("creating", "running", "unhealthy")]
        draining = node_id in self.draining()
        reachable = items is not None
        return {"node": node_id.hex(), "draining": draining, "claims": claims,
                "running": running, "reachable": reachable,
                "safe": draining and not claims and not running}
