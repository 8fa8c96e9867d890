"""What the agent's HTTP API and web UI need of the node: :class:`AgentFace`.

The server is below the agent (the agent's composition module starts it), so it names the
node only through this protocol: the service context plus the agent-wide operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from meshcloud.kit.service import NodeContext

if TYPE_CHECKING:
    from meshcloud.identity.invites import InviteToken
    from meshcloud.kit.service import Service


class AgentFace(NodeContext, Protocol):
    services: list[Service]
    diagnostics: Any
    """Ping, held stream and link benchmark (:mod:`meshcloud.agent.diagnostics`)."""

    @property
    def is_admin(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def create_invite(self, *, ttl_s: float, uses: int,
                      bootstrap: list[str] | None = None) -> InviteToken: ...

    def revoke(self, kind: str, subject: bytes) -> dict[str, Any]: ...

    async def leave(self) -> None: ...

    async def request_stop(self) -> None: ...
