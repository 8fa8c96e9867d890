"""The Mesh page: every node with its state and capacity, and a live picture of the mesh.

Built from ``node.members_view()`` (gossip's table: id, state, incarnation, addresses,
capacity, last change). No node is special: the page only marks which one is serving it.
The section re-renders (``/ui/frag/mesh``) on every ``member.*``, ``peer.*`` and
``node.*`` event, so a node turning suspect, then dead, shows without a reload.

Capacity bars read "how much is taken" (blue, turning amber then red): CPU load per core,
RAM used, disk used when the node reports its disk size. Green bars read "how much is
left": the battery's charge, and the free disk of a node that only reports free space,
relative to the roomiest node (said in its tooltip).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshcloud.ui_text import ago
from meshcloud.web.render import fmt_bytes, render

if TYPE_CHECKING:
    from meshcloud.web.render import UiContext

STATES = ("alive", "suspect", "dead", "left")
PICTURE_WIDTH, PICTURE_HEIGHT = 480, 300
MAX_LINKED = 40
"""Above this many live nodes the picture draws no links (they would be a grey blot)."""


def label_map(labels: Any) -> dict[str, str]:
    """Labels as gossip carries them (a mapping, or a list of pairs) as a dict."""
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items()}
    out: dict[str, str] = {}
    if isinstance(labels, list | tuple):
        for pair in labels:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                out[str(pair[0])] = str(pair[1])
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def level(percent: float) -> str:
    """Colour class of a usage bar."""
    return "high" if percent >= 90 else "mid" if percent >= 70 else "low"


def capacity_bars(cap: Mapping[str, Any], *, roomiest_disk: float = 0.0
                  ) -> list[dict[str, Any]]:
    """The bars of one node's card, in a fixed order: CPU, RAM, Disk, Battery."""
    bars: list[dict[str, Any]] = []
    cores, load = _num(cap.get("cpu_cores")), _num(cap.get("load")) or 0.0
    if cores:
        used = min(100.0, 100.0 * load / cores)
        bars.append({"label": "Load", "percent": round(used), "level": level(used),
                     "text": f"{load:.1f} on {cores:.0f} cores",
                     "title": f"1-minute load average {load:.2f} on {cores:.0f} cores "
                              "(runnable tasks, not a percentage)"})
    total, free = _num(cap.get("ram_total")), _num(cap.get("ram_free"))
    if total:
        used = max(0.0, min(100.0, 100.0 * (total - (free or 0)) / total))
        bars.append({"label": "RAM", "percent": round(used), "level": level(used),
                     "text": f"{fmt_bytes(free)} free",
                     "title": f"{fmt_bytes(total - (free or 0))} used of {fmt_bytes(total)}"})
    disk_total, disk_free = _num(cap.get("disk_total")), _num(cap.get("disk_free"))
    if disk_free is not None and disk_total:
        used = max(0.0, min(100.0, 100.0 * (disk_total - disk_free) / disk_total))
        bars.append({"label": "Disk", "percent": round(used), "level": level(used),
                     "text": f"{fmt_bytes(disk_free)} free",
                     "title": f"{fmt_bytes(disk_free)} free of {fmt_bytes(disk_total)}"})
    elif disk_free is not None:
        share = 100.0 * disk_free / roomiest_disk if roomiest_disk else 0.0
        bars.append({"label": "Disk", "percent": round(share), "level": "relative",
                     "text": f"{fmt_bytes(disk_free)} free",
                     "title": "free disk, relative to the roomiest node"})
    battery = _num(cap.get("battery"))
    if battery is not None and battery >= 0:
        on_ac = cap.get("on_ac")
        bars.append({"label": "Battery", "percent": round(min(battery, 100.0)),
                     "level": "battery-low" if battery < 20 and not on_ac else "battery",
                     "text": f"{battery:.0f}%" + (" · charging" if on_ac else ""),
                     "title": "on mains power" if on_ac else "on battery"})
    return bars


def weight(cap: Mapping[str, Any]) -> float:
    """A node's size in the picture: √(cores × GiB of RAM), at least 1."""
    cores = _num(cap.get("cpu_cores")) or 1.0
    ram_gib = (_num(cap.get("ram_total")) or float(1 << 30)) / (1 << 30)
    return math.sqrt(max(1.0, cores) * max(1.0, ram_gib))


def mesh_picture(members: list[dict[str, Any]], me: str = "") -> dict[str, Any]:
    """Nodes on a ring, sized by capacity, coloured by state; links between live ones."""
    n = max(1, len(members))
    cx, cy = PICTURE_WIDTH / 2, PICTURE_HEIGHT / 2 - 6
    ring = min(PICTURE_WIDTH, PICTURE_HEIGHT) / 2 - 48 if n > 1 else 0.0
    # circles must not overlap on a crowded ring: cap the radius by the arc per node
    largest = 30.0 if n == 1 else max(4.0, min(30.0, math.pi * ring / n * 0.8))
    weights = [weight(m.get("capacity") or {}) for m in members]
    top = max(weights, default=1.0)
    circles = []
    for i, member in enumerate(members):
        angle = 2 * math.pi * i / n - math.pi / 2
        r = largest * (0.45 + 0.55 * weights[i] / top)
        x, y = cx + ring * math.cos(angle), cy + ring * math.sin(angle)
        circles.append({"id": member["id"], "state": member["state"], "me": member["id"] == me,
                        "x": round(x, 1), "y": round(y, 1), "r": round(r, 1),
                        "label": member["id"][:6] if n <= 24 else "",
                        "label_y": round(y + r + (22 if member["id"] == me else 16), 1)})
    alive = [c for c in circles if c["state"] == "alive"]
    lines = []
    if len(alive) <= MAX_LINKED:
        for i, a in enumerate(alive):
            for b in alive[i + 1:]:
                lines.append({"x1": a["x"], "y1": a["y"], "x2": b["x"], "y2": b["y"]})
    return {"width": PICTURE_WIDTH, "height": PICTURE_HEIGHT, "circles": circles,
            "lines": lines}


def totals(members: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Summary tiles: what the live part of the mesh adds up to."""
    alive = [m.get("capacity") or {} for m in members if m["state"] == "alive"]
    # nodes on one machine (a demo, several agents on a laptop) share its cores, RAM and
    # disk: count each machine once
    by_machine: dict[str, dict[str, Any]] = {}
    for index, cap in enumerate(alive):
        by_machine.setdefault(cap.get("machine") or f"node-{index}", cap)
    alive = list(by_machine.values())
    cores = sum(_num(c.get("cpu_cores")) or 0 for c in alive)
    ram_total = sum(_num(c.get("ram_total")) or 0 for c in alive)
    ram_free = sum(_num(c.get("ram_free")) or 0 for c in alive)
    disk_free = sum(_num(c.get("disk_free")) or 0 for c in alive)
    live_nodes = sum(1 for m in members if m["state"] == "alive")
    tiles = [{"label": "Nodes alive", "value": f"{live_nodes} of {len(members)}"}]
    if len(alive) < live_nodes:
        tiles[0]["sub"] = f"on {len(alive)} machine{'s' if len(alive) != 1 else ''}"
    if cores:
        tiles.append({"label": "CPU", "value": f"{cores:.0f} cores"})
    if ram_total:
        tiles.append({"label": "RAM free", "value": f"{fmt_bytes(ram_free)}",
                      "sub": f"of {fmt_bytes(ram_total)}"})
    if disk_free:
        tiles.append({"label": "Disk free", "value": fmt_bytes(disk_free)})
    return tiles


def mesh_context(node: Any) -> dict[str, Any]:
    members = [dict(m) for m in node.members_view()]
    me = node.node_id.hex()
    revoked = {subject.hex() for kind, subject, _ in node.records.revocations()
               if kind == "node"}
    nat = getattr(node, "nat", None)
    reach = nat.status() if nat is not None else {}
    roomiest = max((_num((m.get("capacity") or {}).get("disk_free")) or 0.0
                    for m in members), default=0.0)
    for member in members:
        cap = dict(member.get("capacity") or {})
        member["capacity"] = cap
        member["me"] = member["id"] == me
        member["bars"] = capacity_bars(cap, roomiest_disk=roomiest)
        member["labels"] = label_map(cap.get("labels"))
        member["runtimes"] = list(cap.get("runtimes") or [])
        member["last_change_text"] = ago(member.get("last_change"))
        member["metered"] = bool(cap.get("metered"))
        member["revoked"] = member["id"] in revoked
        member["reach"] = (reach.get("state") if member["me"]
                           else (reach.get("paths") or {}).get(member["id"]))
    # by id, this node's card first: nothing moves when a state changes
    members.sort(key=lambda m: m["id"])
    picture = mesh_picture(members, me)
    members.sort(key=lambda m: not m["me"])
    counts = {state: sum(1 for m in members if m["state"] == state) for state in STATES}
    return {"members": members, "counts": counts, "picture": picture,
            "totals": totals(members), "admin": node.is_admin}


def routes(ui: UiContext) -> list[Route]:
    async def page(request: Request) -> Response:
        return render("mesh.html", **ui.base("mesh", "Mesh"), **mesh_context(ui.node))

    async def fragment(request: Request) -> Response:
        return render("_mesh.html", **mesh_context(ui.node))

    return [Route("/ui/", page), Route("/ui/frag/mesh", fragment)]
