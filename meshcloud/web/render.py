"""Rendering for the web UI: the Jinja2 environment, its filters, the page layout context
and the navigation.

Templates autoescape everything; only SVG the server draws itself (the QR code) is marked
safe. Filters format what every page shows the same way: byte sizes (``bytes``), short
node ids (``short``), relative times (``ago``, refreshed in the browser by ``app.js``
from each ``<time data-ms>``).

The navigation is one entry per resource kind, grouped for the sidebar; entries whose
page is not built yet are shown greyed with a placeholder page, so that a new service
only flips its entry to ready (a service's ``nav()`` entry replaces the placeholder of the
same page and keeps its place).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

from meshcloud.ui_text import ago

if TYPE_CHECKING:
    from meshcloud.api.auth import TokenAuth
    from meshcloud.api.face import AgentFace

HERE = Path(__file__).parent

NavEntry = tuple[str, str, str, bool]
"""(page, label, href, ready)."""

NAV: list[NavEntry] = [
    ("mesh", "Mesh", "/ui/", True),
    ("events", "Events", "/ui/events", True),
    ("invite", "Invite", "/ui/invite", True),
    ("workloads", "Workloads", "/ui/workloads", False),
    ("functions", "Functions", "/ui/functions", False),
    ("sites", "Sites", "/ui/sites", False),
    ("databases", "Databases", "/ui/databases", False),
    ("spark", "Spark", "/ui/spark", True),
    ("storage", "Storage", "/ui/storage", False),
    ("vnets", "V-Nets", "/ui/vnets", False),
]

NAV_GROUPS = {"mesh": "Cluster", "events": "Cluster", "invite": "Cluster",
              "workloads": "Compute", "functions": "Compute", "sites": "Compute",
              "databases": "Compute", "spark": "Compute", "storage": "Data",
              "vnets": "Network"}
"""Sidebar sections; a page not listed goes under "More"."""

PLACEHOLDER_TEXT = {
    "functions": "Functions run on whichever node is asked, warm where they were last "
                 "called and scaled to zero when idle.",
    "sites": "Static sites from a bucket, or a service behind the ingress that every node "
             "runs, by Host name.",
    "databases": "Managed PostgreSQL with failover between nodes, and SQLite-class "
                 "databases for small machines.",
    "spark": "A Spark master and workers spread over the nodes that can carry them.",
    "vnets": "Private networks between workloads: encrypted tunnels, addresses and "
             "NAME.vnet names.",
    "workloads": "Long-running containers and processes, placed on the nodes that fit.",
    "storage": "Buckets and objects, erasure coded over the nodes.",
}

_loader = ChoiceLoader([FileSystemLoader(HERE / "templates")])
_env = Environment(loader=_loader,
                   autoescape=select_autoescape(["html"]), trim_blocks=True,
                   lstrip_blocks=True)


def fmt_bytes(n: float | None) -> str:
    """``1536`` → ``1.5 KiB``; None → ``-``."""
    if n is None or n < 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def short(node_id: Any, n: int = 8) -> str:
    return str(node_id or "")[:n]


_env.filters["bytes"] = fmt_bytes
_env.filters["short"] = short
_env.filters["ago"] = ago


def render(template: str, /, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context),
                        status_code=status_code)


def render_text(template: str, /, **context: Any) -> str:
    return _env.get_template(template).render(**context)


def use_templates(directory: Path) -> None:
    """Look templates up in ``directory`` too, after the UI's own (a service's pages)."""
    loader = FileSystemLoader(directory)
    if all(getattr(known, "searchpath", None) != loader.searchpath
           for known in _loader.loaders):
        _loader.loaders.append(loader)


def merge_nav(base: list[NavEntry], extra: list[NavEntry]) -> list[NavEntry]:
    """A service's entry replaces the placeholder of the same page, keeping its place."""
    by_page = {entry[0]: entry for entry in extra}
    merged = [by_page.pop(entry[0], entry) for entry in base]
    return merged + list(by_page.values())


def nav_groups(entries: list[NavEntry], page: str) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for p, label, href, ready in entries:
        groups.setdefault(NAV_GROUPS.get(p, "More"), []).append(
            {"page": p, "label": label, "href": href, "ready": ready, "active": p == page})
    return [{"name": name, "items": items} for name, items in groups.items()]


@dataclass
class UiContext:
    """What every page module gets: the node, the auth, and the page layout."""

    node: AgentFace
    auth: TokenAuth
    nav: list[NavEntry]

    def base(self, page: str, title: str) -> dict[str, Any]:
        """The layout's context for one page (title, navigation, which node serves it)."""
        return {
            "page": page, "title": title, "mesh_name": self.node.mesh.mesh_name,
            "node_id": self.node.node_id.hex(),
            "nav": [{"page": p, "label": label, "href": href, "ready": ready}
                    for p, label, href, ready in self.nav],
            "nav_groups": nav_groups(self.nav, page),
        }

    def service(self, name: str) -> Any | None:
        """The node's service called ``name`` (storage, workloads...), if it runs one."""
        return next((s for s in getattr(self.node, "services", []) if s.name == name), None)

    def render(self, template: str, /, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        return render(template, status_code=status_code, **context)

    def use_templates(self, directory: Path) -> None:
        use_templates(directory)


Renderer = Callable[..., HTMLResponse]
