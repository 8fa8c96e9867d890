"""The service contract: what a domain service offers the node, and what it gets from it.

A service (storage, workloads, ingress, and the next ones) is built by the agent's
composition module (:mod:`meshcloud.agent.compose`) from a :class:`NodeContext`, never from
the whole node, and is started in the node's nursery before the API. Besides ``name`` and
``run`` it may offer (:class:`ServiceBase` gives the empty defaults):

* ``tables()``: the replicated state tables it uses (opened by the service itself, in its
  constructor, with ``ctx.state.open_table``; listed here for the status page and tests);
* ``api_routes()``: JSON API routes (token-protected like the rest), built on
  :mod:`meshcloud.kit.api`;
* ``ui_routes(ui)``: web UI pages (``ui.base(page, title)`` gives the layout context,
  :func:`meshcloud.web.render.render` renders a template) and ``nav()``: its entries in
  the UI's navigation ``(page, label, href, ready)``;
* ``status()``: its section of ``GET /v1/status``; ``runtime_info()``: keys for the data
  dir's runtime file (what a local CLI needs to find it, e.g. the S3 URL);
* ``events``: the event kinds it emits on ``ctx.events``.

Its CLI verbs live in its package's ``cli.py`` (on :mod:`meshcloud.kit.cli`) and are listed
once, in the composition module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

if TYPE_CHECKING:
    from meshcloud.clock import Clock
    from meshcloud.config import NodeConfig
    from meshcloud.datadir import DataDir, MeshInfo
    from meshcloud.events import EventFeed
    from meshcloud.identity.keys import SigningKey
    from meshcloud.state.driver import StateDriver
    from meshcloud.state.schema import TableSchema
    from meshcloud.state.tables import TableMembershipRecords
    from meshcloud.transport.base import Transport


class NodeContext(Protocol):
    """The narrow view of the node a service receives."""

    @property
    def node_id(self) -> bytes: ...
    transport: Transport
    state: StateDriver
    clock: Clock
    events: EventFeed
    datadir: DataDir
    config: NodeConfig
    mesh: MeshInfo
    root_key: SigningKey | None
    """The mesh's admin key when this node holds it (admin-only operations), else None."""
    records: TableMembershipRecords
    """Membership records: revocations, for services that hand out credentials."""

    def alive_peer_ids(self) -> frozenset[bytes]:
        """The other members gossip holds alive (or only suspects)."""
        ...

    def members_view(self) -> list[dict[str, Any]]:
        """Every known member with its state and capacity (as ``GET /v1/members``)."""
        ...

    def known_node_ids(self) -> list[bytes]:
        """This node, the members and the peers it has heard of."""
        ...


@runtime_checkable
class Service(Protocol):
    name: str

    @property
    def events(self) -> tuple[str, ...]:
        """The event kinds it emits on ``ctx.events`` (tests hold this to the code)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None: ...

    def tables(self) -> Sequence[TableSchema]: ...

    def api_routes(self) -> list[Any]: ...

    def ui_routes(self, ui: Any) -> list[Any]: ...

    def nav(self) -> list[tuple[str, str, str, bool]]: ...

    def status(self) -> dict[str, Any] | None: ...

    def runtime_info(self) -> dict[str, Any]: ...


class ServiceBase:
    """Empty defaults for the optional parts of :class:`Service`."""

    name = ""
    events: tuple[str, ...] = ()

    def tables(self) -> Sequence[TableSchema]:
        return ()

    def api_routes(self) -> list[Any]:
        return []

    def ui_routes(self, ui: Any) -> list[Any]:
        return []

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return []

    def status(self) -> dict[str, Any] | None:
        return None

    def runtime_info(self) -> dict[str, Any]:
        return {}
