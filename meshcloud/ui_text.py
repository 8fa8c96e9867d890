"""Text rendering of API answers for the CLI (tables via rich)."""

from __future__ import annotations

import time
from typing import Any


def ago(ms: int | None) -> str:
    if not ms:
        return "-"
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def unique_prefixes(ids: list[str], min_len: int = 6) -> dict[str, str]:
    """Each id's shortest prefix (at least ``min_len``) that no other id shares."""
    out = {}
    for ident in ids:
        others = [o for o in ids if o != ident]
        n = min(min_len, len(ident))
        while n < len(ident) and any(o.startswith(ident[:n]) for o in others):
            n += 1
        out[ident] = ident[:n]
    return out


def print_status(status: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    node = status["node"]
    admin = " (admin)" if node.get("admin") else ""
    console.print(f"[bold]node[/] {node['id'][:12]}{admin} of mesh [bold]{node['mesh_name']}[/] "
                  f"({node['mesh_id'][:12]})")
    console.print(f"  addresses {', '.join(node['addresses'])}   api {', '.join(node['api'])}   "
                  f"up {node['uptime_s']:.0f}s")
    reach = status.get("reachability") or {}
    if reach:
        relays = ", ".join(r[:12] for r in reach.get("relays") or []) or "none"
        seen = f"   seen as {reach['observed']}" if reach.get("observed") else ""
        console.print(f"  reachability {reach.get('state')}   relays {relays}{seen}")
        for peer, path in sorted((reach.get("paths") or {}).items()):
            if path != "direct":
                console.print(f"    to {peer[:12]}: {path}")
    ingress = status.get("ingress") or {}
    if ingress.get("http") or ingress.get("http_error"):
        where = f"http://{ingress['http']}" if ingress.get("http") else "not listening"
        problem = f" ({ingress['http_error']})" if ingress.get("http_error") else ""
        console.print(f"  ingress {where}{problem}")
    if ingress.get("https") or ingress.get("https_error"):
        where = f"https://{ingress['https']}" if ingress.get("https") else "not listening"
        problem = f" ({ingress['https_error']})" if ingress.get("https_error") else ""
        console.print(f"  ingress {where}{problem}")
    members = status.get("members")
    if members is not None:
        table = Table(title=f"members ({sum(m['state'] == 'alive' for m in members)} alive)",
                      title_justify="left")
        short = unique_prefixes([m["id"] for m in members])
        table.add_column("node", no_wrap=True,
                         min_width=max([len(p) + 5 for p in short.values()] or [4]))
        for column in ("state", "inc", "addresses", "cpu", "ram free", "disk free", "battery",
                       "arch", "changed"):
            table.add_column(column)
        for m in members:
            cap = m.get("capacity") or {}
            table.add_row(
                short[m["id"]] + (" (me)" if m["id"] == node["id"] else ""),
                _state(m["state"]), str(m.get("incarnation", "")),
                ", ".join(m.get("addresses", [])),
                f"{cap.get('cpu_cores', '-')}",
                _bytes(cap.get("ram_free")), _bytes(cap.get("disk_free")),
                _battery(cap), cap.get("arch", "-"), ago(m.get("last_change")),
            )
        console.print(table)
    else:
        table = Table(title="peers", title_justify="left")
        short = unique_prefixes([p["id"] for p in status["peers"]])
        table.add_column("node", no_wrap=True,
                         min_width=max([len(p) for p in short.values()] or [4]))
        for column in ("connected", "addresses", "version", "changed"):
            table.add_column(column)
        for p in status["peers"]:
            table.add_row(short[p["id"]], "yes" if p["connected"] else "no",
                          ", ".join(p["addresses"]), p.get("agent_version") or "-",
                          ago(p.get("last_change")))
        console.print(table)
    versions = status.get("versions", {})
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


def _state(state: str) -> str:
    colour = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "blue"}.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} PiB"


def _battery(cap: dict[str, Any]) -> str:
    level = cap.get("battery")
    if level is None:
        return "-"
    return f"{level:.0f}%" + (" AC" if cap.get("on_ac") else "")
