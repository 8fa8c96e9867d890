"""Membership records: which invites were used by whom, and what is revoked.

Admission (see :mod:`meshcloud.auth`) consults these records on every handshake. They are
tiny, append-mostly, and must survive restarts. :class:`FileMembershipRecords` keeps them
in one JSON file under the data dir, written atomically; when the replicated cluster state
is running, the node mirrors them into its CRDT tables so that every member refuses a
revoked node and counts an invite's uses mesh-wide.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class MembershipRecords(Protocol):
    def is_revoked(self, node_id: bytes, invite_id: bytes) -> bool: ...

    def redeemed_by(self, invite_id: bytes) -> set[bytes]: ...

    def record_redemption(self, invite_id: bytes, node_id: bytes, now_ms: int) -> None: ...


@dataclass
class MemoryMembershipRecords:
    redemptions: dict[bytes, dict[bytes, int]] = field(default_factory=dict)
    revoked_nodes: dict[bytes, int] = field(default_factory=dict)
    revoked_invites: dict[bytes, int] = field(default_factory=dict)

    def is_revoked(self, node_id: bytes, invite_id: bytes) -> bool:
        return node_id in self.revoked_nodes or invite_id in self.revoked_invites

    def redeemed_by(self, invite_id: bytes) -> set[bytes]:
        return set(self.redemptions.get(invite_id, {}))

    def record_redemption(self, invite_id: bytes, node_id: bytes, now_ms: int) -> None:
        self.redemptions.setdefault(invite_id, {}).setdefault(node_id, now_ms)
        self._changed()

    def revoke_node(self, node_id: bytes, now_ms: int) -> None:
        self.revoked_nodes.setdefault(node_id, now_ms)
        self._changed()

    def revoke_invite(self, invite_id: bytes, now_ms: int) -> None:
        self.revoked_invites.setdefault(invite_id, now_ms)
        self._changed()

    def merge(self, other: MemoryMembershipRecords) -> bool:
        """Take in another node's records (union: records only grow). True if anything new."""
        before = self.snapshot()
        for invite, users in other.redemptions.items():
            for node, at in users.items():
                self.redemptions.setdefault(invite, {}).setdefault(node, at)
        for node, at in other.revoked_nodes.items():
            self.revoked_nodes.setdefault(node, at)
        for invite, at in other.revoked_invites.items():
            self.revoked_invites.setdefault(invite, at)
        changed = self.snapshot() != before
        if changed:
            self._changed()
        return changed

    def snapshot(self) -> dict:
        return {
            "redemptions": {
                i.hex(): {n.hex(): at for n, at in users.items()}
                for i, users in sorted(self.redemptions.items())
            },
            "revoked_nodes": {n.hex(): at for n, at in sorted(self.revoked_nodes.items())},
            "revoked_invites": {i.hex(): at for i, at in sorted(self.revoked_invites.items())},
        }

    @classmethod
    def from_snapshot(cls, data: dict) -> MemoryMembershipRecords:
        return cls(
            redemptions={
                bytes.fromhex(i): {bytes.fromhex(n): int(at) for n, at in users.items()}
                for i, users in data.get("redemptions", {}).items()
            },
            revoked_nodes={bytes.fromhex(n): int(at)
                           for n, at in data.get("revoked_nodes", {}).items()},
            revoked_invites={bytes.fromhex(i): int(at)
                             for i, at in data.get("revoked_invites", {}).items()},
        )

    def _changed(self) -> None:
        """Hook for persistence."""


class FileMembershipRecords(MemoryMembershipRecords):
    """Records persisted in a JSON file, rewritten atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        loaded = MemoryMembershipRecords.from_snapshot(data)
        super().__init__(loaded.redemptions, loaded.revoked_nodes, loaded.revoked_invites)

    def _changed(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
