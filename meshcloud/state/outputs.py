"""What :class:`~.core.StateCore` asks its driver to do, or reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshcloud.state.table import Change

if TYPE_CHECKING:
    from meshcloud.state.sync import SyncSession

NodeId = bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``msg`` to ``peer`` on ``/meshcloud/state/1`` (best effort)."""

    peer: NodeId
    msg: Any


@dataclass(frozen=True, slots=True)
class StartSync:
    """Open a ``/meshcloud/state-sync/1`` stream to ``session.peer`` and run ``session``:
    send each ``session.next_request()``, feed each reply to ``StateCore.on_sync_reply``,
    then report the end with ``StateCore.on_sync_closed``."""

    session: SyncSession


Output = SendDatagram | StartSync | Change
