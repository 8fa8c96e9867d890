"""``GET /v1/status``: the node, its peers and members, versions, and each service."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

import meshcloud
from meshcloud import priority

if TYPE_CHECKING:
    from meshcloud.agent.node import Node


def node_status(node: Node) -> dict[str, Any]:
    now = node.clock.wall_ms()
    sections = {s.name: s.status() for s in node.services}
    return {
        "node": {
            "id": node.node_id.hex(),
            "mesh_id": node.mesh.mesh_id.hex(),
            "mesh_name": node.mesh.mesh_name,
            "admin": node.is_admin,
            "addresses": node.advertised_addresses(),
            "api": node.api_urls,
            "started_at": node.started_at_ms,
            "uptime_s": round((now - node.started_at_ms) / 1000, 1)
            if node.started_at_ms else 0,
            "issuer": node.cert.issuer_id.hex(),
            "cert_links": node.cert.depth,
            "pid": os.getpid(),
        },
        "peers": sorted((p.to_json() for p in node.peers.values()),
                        key=lambda p: (not p["connected"], p["id"])),
        "members": node.members_view(),
        "loop": {**node.members.loop_status(), **priority.live_status()},
        "reachability": node.nat.status(),
        "versions": versions(),
        **({"transport": node.transport.statistics()}
           if hasattr(node.transport, "statistics") else {}),
        **{name: section for name, section in sections.items() if section is not None},
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"meshcloud": meshcloud.__version__, "python": platform.python_version()}
    for name in ("trio", "pynacl", "cbor2", "lmdb", "zfec", "hypercorn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["platform"] = f"{platform.system().lower()}-{platform.machine()}"
    return out
