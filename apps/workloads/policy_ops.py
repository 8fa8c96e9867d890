"""The workload policy on a node: what the reconciler asks, what the admin's API does.

=======  ====================================  ==============================================
method   path                                  what
=======  ====================================  ==============================================
GET      /v1/policy/root                       every ``workload_policy`` row and its verdict
POST     /v1/policy/root/{name}                ``{"allow": true|false}``: sign and store a
                                               ``run-as-root`` / ``revoke-root`` statement
                                               (only on the node holding the mesh root key:
                                               403 ``not_admin`` elsewhere)
=======  ====================================  ==============================================

Statements and their checks are in :mod:`apps.workloads.policy`. The newest valid
statement seen per workload is kept in ``<data_dir>/runtimes/policy-seen.json``, so a
revocation seen once keeps beating replays of older grants after the agent restarts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apps.workloads.policy import (
    ALLOW,
    POLICY,
    REVOKE,
    RootPolicy,
    RootPolicyCheck,
    is_valid,
    sign_policy,
)
from apps.workloads.spec import NAME_RE
from meshcloud.errors import MeshError
from meshcloud.identity.keys import SigningKey

log = logging.getLogger(__name__)


class RootPolicyOps:
    def __init__(self, state: Any, mesh_id: bytes, root_public: bytes,
                 root_key: SigningKey | None, wall_ms: Callable[[], int],
                 data_dir: Path | None = None) -> None:
        self.state = state
        self.mesh_id = mesh_id
        self.root_key = root_key
        self.wall_ms = wall_ms
        self.check = RootPolicyCheck(mesh_id, root_public)
        self.seen_path = None if data_dir is None else \
            Path(data_dir) / "runtimes" / "policy-seen.json"
        self._saved: dict[str, tuple[int, str]] = {}
        if self.seen_path is not None:
            try:
                raw = json.loads(self.seen_path.read_text())
                self.check.remember({k: tuple(v) for k, v in raw.items()
                                     if isinstance(v, list)})
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("%s unreadable: %s", self.seen_path, exc)
            self._saved = self.check.newest

    def allowed(self) -> set[str]:
        """Workloads whose replicas this node may start as root (verified rows only)."""
        allowed = self.check.allowed(self.state.scan(POLICY.name))
        self._keep()
        return allowed

    def _keep(self) -> None:
        newest = self.check.newest
        if self.seen_path is None or newest == self._saved:
            return
        try:
            self.seen_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.seen_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({k: list(v) for k, v in newest.items()},
                                      sort_keys=True))
            os.replace(tmp, self.seen_path)
            self._saved = newest
        except OSError as exc:
            log.warning("cannot keep %s: %s", self.seen_path, exc)

    def set_root(self, name: str, allow: bool) -> dict[str, Any]:
        if self.root_key is None:
            raise MeshError("this node holds no admin key: change the workload policy on the "
                            "node where `meshcloud init` ran", code="not_admin")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise MeshError(f"{name!r} is not a workload name", code="bad_request")
        current = self.state.get(POLICY.name, name)
        issued = self.wall_ms()
        if is_valid(self.mesh_id, self.check.root_public, name, current):
            issued = max(issued, current.issued_ms + 1)  # newer than the admin's last word
        row = sign_policy(self.root_key, self.mesh_id, name, ALLOW if allow else REVOKE,
                          issued)
        self.state.put(POLICY.name, name, row)
        self.check.allows(name, row)  # remember it: an older replay now loses here too
        self._keep()
        return self._row(name, row)

    def rows(self) -> list[dict[str, Any]]:
        return [self._row(key[0], row) for key, row in self.state.scan(POLICY.name)
                if row is not None and isinstance(key[0], str)]

    def _row(self, name: str, row: RootPolicy) -> dict[str, Any]:
        return {"workload": name, "verb": row.verb, "issued_ms": row.issued_ms,
                "verdict": self.check.describe(name, row)}


def policy_routes(ops: RootPolicyOps) -> list[Route]:
    async def list_rows(request: Request) -> Response:
        return JSONResponse({"root": ops.rows()})

    async def set_root(request: Request) -> Response:
        from meshcloud.kit.api import read_json

        body = await read_json(request)
        allow = body.get("allow")
        if not isinstance(allow, bool):
            raise MeshError("field 'allow' must be true or false", code="bad_request")
        return JSONResponse(ops.set_root(request.path_params["name"], allow))

    return [Route("/v1/policy/root", list_rows, methods=["GET"]),
            Route("/v1/policy/root/{name}", set_root, methods=["POST"])]
