"""The Sites page in Chromium: a site deployed through node 1's CLI appears on node 2's
page with its versions, domains and the requests made through an ingress; rolling back
and removing from the page reach every node."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from sim.agents import Agent, wait_until
from tests.ui.conftest import PHONE

pytestmark = [pytest.mark.browser, pytest.mark.real]

MESH_ENV = {"MESHCLOUD_HTTP": "127.0.0.1:0"}
"""Each agent's HTTP ingress on its own ephemeral port (read back from its status)."""


def ingress_get(agent: Agent, target: str, host: str) -> int:
    address = agent.get("/v1/status")["ingress"]["http"]
    ip, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(ip, int(port), timeout=10)
    try:
        conn.request("GET", target, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def current(agent: Agent, name: str) -> int | None:
    sites = {s["name"]: s for s in agent.get("/v1/sites")["sites"]}
    return sites[name]["current"] if name in sites else None


def test_sites_page_versions_counters_rollback_remove(mesh, ui, artifacts, tmp_path: Path):
    node1, node2, node3 = mesh.agents
    page = ui.open(node2, "/ui/sites")
    expect(page.locator("nav a[href='/ui/sites']")).not_to_have_class(re.compile(r"\bsoon\b"))
    expect(page.locator("#sites .empty-state")).to_be_visible()

    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>one</h1>")
    (root / "404.html").write_text("<h1>lost</h1>")
    node1.cli("site", "deploy", str(root), "--name", "blog", "--domain", "blog.home")
    (root / "index.html").write_text("<h1>two</h1>")
    node1.cli("site", "deploy", str(root), "--name", "blog")
    wait_until(lambda: current(node2, "blog") == 2, 10, message="v2 on node 2")

    card = page.locator('#sites .site[data-site="blog"]')
    expect(card).to_have_attribute("data-current", "2", timeout=10_000)
    expect(card.locator(".domain")).to_have_text("blog.home")
    expect(card.locator(".version")).to_have_count(2)

    assert ingress_get(node3, "/", "blog.home") == 200
    assert ingress_get(node3, "/missing", "blog.home") == 404
    expect(card.locator(".requests")).to_have_attribute("data-requests", "2", timeout=15_000)
    expect(card.locator(".not-found")).to_have_text("1 not found")

    page.screenshot(path=str(artifacts / "sites.png"), full_page=True)
    phone = ui.open(node1, "/ui/sites", viewport=PHONE)
    expect(phone.locator('#sites .site[data-site="blog"]')).to_be_visible()
    phone.screenshot(path=str(artifacts / "sites-phone.png"), full_page=True)
    card.locator("button.rollback", has_text="Roll back to v1").click()
    expect(card).to_have_attribute("data-current", "1", timeout=10_000)
    wait_until(lambda: current(node3, "blog") == 1 and current(node1, "blog") == 1, 10,
               message="the rollback on every node")

    other = ui.open(node3, "/ui/sites")
    card3 = other.locator('#sites .site[data-site="blog"]')
    expect(card3).to_have_attribute("data-current", "1")
    remove = card3.locator("button", has_text="Remove")
    remove.click()
    expect(remove).to_have_text("Sure? Remove")
    remove.click()
    expect(card3).to_have_count(0, timeout=10_000)
    expect(card).to_have_count(0, timeout=15_000)  # node 2's page follows by its poll
    wait_until(lambda: current(node1, "blog") is None, 10, message="removed everywhere")
