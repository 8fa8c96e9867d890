"""The service plugin contract, end to end: a service the node knows nothing about gets a
NodeContext, opens its table, and its API route, UI page (with its own template), navigation
entry and status section are served by a real node."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcloud.agent.lifecycle import init_mesh
from meshcloud.agent.node import Node
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.datadir import DataDir
from meshcloud.kit.api import read_json
from meshcloud.kit.service import NodeContext, Service, ServiceBase
from meshcloud.kit.ui import UiKit
from meshcloud.state.schema import TableSchema, record_codec
from meshcloud.transport.memory import MemoryNetwork
from tests.meshcloud.test_web_routes import CONFIG, logged_in


@message(TagBlock.SIM + 80)  # a test-only tag, as tests/meshcloud/test_codec.py uses
@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    text: str


_enc, _dec = record_codec(Note)
NOTES: TableSchema[Note] = TableSchema("test-notes", partition=(str,), encode=_enc,
                                       decode=_dec)


class NotesService(ServiceBase):
    name = "functions"  # takes over the placeholder page of the navigation

    def __init__(self, ctx: NodeContext, templates: Path) -> None:
        self.ctx = ctx
        self.templates = templates
        self.started = False
        for schema in self.tables():
            ctx.state.open_table(schema)

    def tables(self) -> tuple[TableSchema[Any], ...]:
        return (NOTES,)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.started = True
        task_status.started()
        await trio.sleep_forever()

    def api_routes(self) -> list[Any]:
        async def put(request: Request) -> Response:
            body = await read_json(request)
            self.ctx.state.put("test-notes", (body["name"],), Note(text=body["text"]))
            self.ctx.events.emit("note.written", name=body["name"])
            return JSONResponse({"node": self.ctx.node_id.hex()})

        return [Route("/v1/notes", put, methods=["POST"])]

    def ui_routes(self, ui: UiKit) -> list[Any]:
        ui.use_templates(self.templates)

        async def page(request: Request) -> Response:
            notes = [n.text for _, n in self.ctx.state.scan("test-notes")]
            return ui.render("notes_page.html", **ui.base("functions", "Notes"), notes=notes)

        return [Route("/ui/functions", page)]

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("functions", "Functions", "/ui/functions", True)]

    def status(self) -> dict[str, Any]:
        return {"started": self.started, "notes": len(self.ctx.state.scan("test-notes"))}


async def test_a_new_service_plugs_in_through_the_contract(tmp_path, nursery):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "notes_page.html").write_text(
        '{% extends "base.html" %}{% block content %}'
        '{% for n in notes %}<p class="note">{{ n }}</p>{% endfor %}{% endblock %}')
    network = MemoryNetwork()
    datadir = DataDir(tmp_path / "a")
    init_mesh(datadir, "home", {})
    built: list[NotesService] = []

    def services(ctx: NodeContext) -> list[Service]:
        built.append(NotesService(ctx, templates))
        return list(built)

    node = Node(datadir, CONFIG,
                transport_factory=lambda key, auth, config: network.add(key, auth),
                services=services)
    await nursery.start(node.run)
    assert built and isinstance(built[0], Service) and built[0].ctx is node
    browser = await logged_in(node)

    status = await trio.to_thread.run_sync(
        browser.api, "POST", "/v1/notes", b'{"name": "a", "text": "<hello>"}')
    assert status == 200
    assert node.events.recent(10, "note.written")
    code, html = await trio.to_thread.run_sync(browser.get, "/ui/functions")
    assert code == 200
    assert '<p class="note">&lt;hello&gt;</p>' in html  # its template, escaped, in the layout
    assert 'href="/ui/functions"' in html
    assert node.status()["functions"] == {"started": True, "notes": 1}
    # the domains a default node runs are not there: only what the factory built
    assert {s.name for s in node.services} == {"functions"}
    code, _ = await trio.to_thread.run_sync(browser.get, "/ui/storage")
    assert code == 200  # the storage placeholder page, not the storage service's


def _emitted_kinds(package: Path) -> set[str]:
    """Event kinds a package emits: literal first arguments of ``emit(...)``/``Report(...)``."""
    import ast

    kinds: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            first = node.args[0]
            if isinstance(first, ast.IfExp):  # emit("a" if x else "b")
                candidates = [first.body, first.orelse]
            else:
                candidates = [first]
            for arg in candidates:
                if name in ("emit", "Report") and isinstance(arg, ast.Constant) \
                        and isinstance(arg.value, str):
                    kinds.add(arg.value)
    return kinds


def test_each_service_declares_the_events_it_emits():
    from apps.workloads.service import WorkloadService
    from blobstore.node_service import BlobService

    root = Path(__file__).resolve().parents[2]
    for service, package in ((WorkloadService, root / "apps" / "workloads"),
                             (BlobService, root / "blobstore")):
        emitted = _emitted_kinds(package)
        assert emitted, package
        assert emitted == set(service.events), (service.name, emitted ^ set(service.events))
