"""Browser tests of the web UI: real agents on 127.0.0.1, Debian's Chromium via Playwright.

One mesh and one browser per test module (starting them is most of a module's time);
each test opens pages in fresh browser contexts logged in with the node's one-time link.
Every context's console errors and uncaught page errors are collected and the test fails
if there are any. Screenshots go to ``artifacts/ui/`` (gitignored).
"""

from __future__ import annotations

import shutil
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sim.agents import Agent, LocalCluster, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def mesh(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three agents, each joined through the one before; a module may set ``MESH_ENV``
    (environment of the agents)."""
    env = dict(getattr(request.module, "MESH_ENV", {}))
    cluster = LocalCluster.create(tmp_path_factory.mktemp("uimesh"), 3, env=env)
    try:
        yield cluster
    finally:
        try:
            remove_workloads(cluster)
        finally:
            cluster.close()


def remove_workloads(cluster: LocalCluster, timeout: float = 30.0) -> None:
    """Remove every workload and wait until no agent runs a replica: process replicas
    live in their own sessions and would outlive agents killed by ``close``."""
    live = [a for a in cluster.agents if a.running]
    if not live:
        return
    try:
        names = [w["name"] for w in live[0].get("/v1/workloads")["workloads"]]
    except urllib.error.HTTPError:
        return  # no workload service
    for name in names:
        live[0].api_call("DELETE", f"/v1/workloads/{name}")

    def idle() -> bool:
        return all(not a.get("/v1/status").get("workloads", {}).get("running_here")
                   for a in live if a.running)

    wait_until(idle, timeout, interval=0.2, message="replicas stopped")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def ui_host(agent: Agent) -> str:
    """The UI's own name for ``agent`` (browsers resolve ``*.localhost`` to loopback; a
    UI request through 127.0.0.1 is redirected there)."""
    return "ui.localhost:" + agent.api_url.rsplit(":", 1)[1]


def ui_url(agent: Agent) -> str:
    return f"http://{ui_host(agent)}"


@dataclass
class Ui:
    """Opens logged-in pages on any agent and keeps what the browser complained about."""

    browser: Any
    errors: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)

    def open(self, agent: Agent, path: str = "/ui/", *, viewport: dict[str, int] = DESKTOP,
             downloads: bool = False) -> Any:
        context = self.browser.new_context(viewport=viewport, accept_downloads=downloads)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{agent.name} {page.url}: console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{agent.name} {page.url}: {e}"))
        ticket = agent.post("/v1/ui/ticket")["ticket"]
        response = page.goto(f"{agent.api_url}/ui/login?ticket={ticket}")
        assert response is not None and response.ok, "login link refused"
        assert page.url == ui_url(agent) + "/ui/", "the login link did not move to ui.localhost"
        if path != "/ui/":
            page.goto(ui_url(agent) + path)
        return page

    def anonymous(self, viewport: dict[str, int] = DESKTOP) -> Any:
        """A page in a context that never logged in (its errors are expected, not kept)."""
        context = self.browser.new_context(viewport=viewport)
        self.contexts.append(context)
        return context.new_page()

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts.clear()


@pytest.fixture
def ui(browser: Any) -> Iterator[Ui]:
    helper = Ui(browser)
    try:
        yield helper
    finally:
        helper.close()
    assert helper.errors == [], "the browser reported errors:\n" + "\n".join(helper.errors)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def zbar_decode(png: Path) -> str:
    """The text of the one QR code in ``png`` (zbarimg, from apt's zbar-tools)."""
    import subprocess

    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.skip("zbarimg (apt zbar-tools) is not installed")
    result = subprocess.run([zbarimg, "--raw", "-q", str(png)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, f"zbarimg found no code: {result.stderr}"
    return result.stdout.strip()
