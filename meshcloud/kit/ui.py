"""The UI kit: what a service's pages get from the web UI (:class:`UiKit`).

A domain's ``ui.py`` exposes ``routes(ui: UiKit) -> list[Route]``; its templates live in
its own ``templates/`` directory, registered with ``ui.use_templates(path)``, and extend
the UI's ``base.html`` (layout, navigation, the shared ``_unavailable.html`` and
``placeholder.html``). The web UI (:mod:`meshcloud.web.render`) implements this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from starlette.responses import HTMLResponse


class UiKit(Protocol):
    node: Any
    """The serving node, as the services see it (:class:`~meshcloud.kit.service.NodeContext`)."""

    def base(self, page: str, title: str) -> dict[str, Any]:
        """The layout's context for one page (title, navigation, which node serves it)."""
        ...

    def service(self, name: str) -> Any | None:
        """The node's service called ``name``, if it runs one."""
        ...

    def render(self, template: str, /, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        ...

    def use_templates(self, directory: Path) -> None:
        """Look templates up in ``directory`` too (a service's own ``templates/``)."""
        ...
