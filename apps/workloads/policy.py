"""The mesh's workload policy: which workloads the admin lets run as root.

Replicas run unprivileged by default (the process runtime as a per-workload uid, podman
with a user namespace: :mod:`apps.runtimes.users`). Only the mesh admin — whoever holds
the mesh root key — can let a named workload run as root, by signing a statement::

    Ed25519_root( cbor(["meshcloud/workload-policy/1", mesh id, workload name,
                        "run-as-root" | "revoke-root", issued_ms]) )

stored in the replicated ``workload_policy`` table (key: workload name, last writer
wins). Any member can write any row, so rows are *claims*: the node about to start a
replica verifies the signature against the mesh root public key it already trusts, and a
missing, malformed, forged, foreign-mesh or misfiled row means "not root". Revoking
writes a signed ``revoke-root`` statement rather than deleting the row, and
:class:`RootPolicyCheck` remembers the newest valid statement it has seen for each
workload, so replaying an older ``run-as-root`` statement over a revocation does not
bring root back on a node that saw the revocation (the node keeps what it has seen on
disk, :mod:`apps.workloads.policy_ops`, so a restart does not forget it). A member can
still *delete* or overwrite the row (every member can write the state): that only ever
denies root.

Pure: no I/O; the workload service feeds it rows, the reconciler asks it per workload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cbor2

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import MeshError
from meshcloud.identity.keys import SigningKey, verify
from meshcloud.state.schema import TableSchema, record_codec

DOMAIN = "meshcloud/workload-policy/1"
ALLOW = "run-as-root"
REVOKE = "revoke-root"
VERBS = (ALLOW, REVOKE)
MAX_NAME = 64


@message(TagBlock.APPS + 40)
@dataclass(frozen=True, slots=True, kw_only=True)
class RootPolicy:
    """One signed statement of the admin about one workload (see the module docstring)."""

    workload: str
    verb: str
    issued_ms: int
    signature: bytes = b""


_enc, _dec = record_codec(RootPolicy)
POLICY: TableSchema[RootPolicy] = TableSchema(
    "workload_policy", partition=(str,), encode=_enc, decode=_dec, max_value_bytes=1024)


def signed_bytes(mesh_id: bytes, workload: str, verb: str, issued_ms: int) -> bytes:
    """What the root key signs: domain, mesh, name, verb and time, canonical CBOR."""
    return cbor2.dumps([DOMAIN, mesh_id, workload, verb, issued_ms], canonical=True)


def sign_policy(root_key: SigningKey, mesh_id: bytes, workload: str, verb: str,
                issued_ms: int) -> RootPolicy:
    if verb not in VERBS:
        raise MeshError(f"policy verb {verb!r} must be one of {', '.join(VERBS)}",
                        code="invalid_policy")
    if not isinstance(workload, str) or not 0 < len(workload) <= MAX_NAME:
        raise MeshError(f"workload name {workload!r} must be 1..{MAX_NAME} characters",
                        code="invalid_policy")
    return RootPolicy(workload=workload, verb=verb, issued_ms=issued_ms,
                      signature=root_key.sign(signed_bytes(mesh_id, workload, verb,
                                                           issued_ms)))


def is_valid(mesh_id: bytes, root_public: bytes, key: object, row: object) -> bool:
    """True when ``row``, stored under ``key``, is the mesh root key's own statement."""
    if not isinstance(row, RootPolicy) or not isinstance(key, str) or row.workload != key:
        return False
    if row.verb not in VERBS or not isinstance(row.issued_ms, int) or \
            isinstance(row.issued_ms, bool) or row.issued_ms < 0:
        return False
    if not isinstance(row.signature, bytes):
        return False
    return verify(root_public, signed_bytes(mesh_id, row.workload, row.verb, row.issued_ms),
                  row.signature)


class RootPolicyCheck:
    """Decides, per workload, whether its replicas may run as root on this node."""

    def __init__(self, mesh_id: bytes, root_public: bytes) -> None:
        self.mesh_id = mesh_id
        self.root_public = root_public
        self._newest: dict[str, tuple[int, str]] = {}
        """Newest valid (issued_ms, verb) seen per workload: older replays lose to it."""

    @property
    def newest(self) -> dict[str, tuple[int, str]]:
        """What it has seen (workload → newest valid issued_ms, verb), to be kept."""
        return dict(self._newest)

    def remember(self, seen: dict[str, tuple[int, str]]) -> None:
        """Restore what an earlier check saw (entries that are not well formed are skipped)."""
        for name, value in seen.items():
            if isinstance(name, str) and isinstance(value, tuple | list) and len(value) == 2 \
                    and isinstance(value[0], int) and value[1] in VERBS:
                current = self._newest.get(name)
                if current is None or current[0] < value[0]:
                    self._newest[name] = (value[0], value[1])

    def allows(self, workload: str, row: object) -> bool:
        """``row`` is the current ``workload_policy`` row of ``workload`` (or None)."""
        if not is_valid(self.mesh_id, self.root_public, workload, row):
            return False
        assert isinstance(row, RootPolicy)
        seen = self._newest.get(workload)
        # at equal times a revocation wins (the admin's two clicks in one millisecond)
        mine = (row.issued_ms, 1 if row.verb == REVOKE else 0)
        if seen is not None and (seen[0], 1 if seen[1] == REVOKE else 0) > mine:
            return False
        self._newest[workload] = (row.issued_ms, row.verb)
        return row.verb == ALLOW

    def allowed(self, rows: Iterable[tuple[Any, Any]]) -> set[str]:
        """Workloads allowed root, from a scan of the table (``(key tuple, row)`` pairs)."""
        out = set()
        for key, row in rows:
            name = key[0] if isinstance(key, tuple) and key else key
            if isinstance(name, str) and self.allows(name, row):
                out.add(name)
        return out

    def describe(self, workload: str, row: object) -> str:
        """One word for listings: allowed, revoked, invalid or replayed."""
        if not is_valid(self.mesh_id, self.root_public, workload, row):
            return "invalid"
        assert isinstance(row, RootPolicy)
        if not self.allows(workload, row):
            return "revoked" if row.verb == REVOKE else "superseded"
        return "allowed"
