"""The routes of each workload on the Workloads page in Chromium: a workload published
with ``--http --domain`` through node 1's CLI shows on node 3's page as host/prefix →
endpoint with its live replicas, and the count follows a scale down and up."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from sim.agents import wait_until
from tests.workload_python import inline_script_line

pytestmark = [pytest.mark.browser, pytest.mark.real]

MESH_ENV = {"MESHCLOUD_RUNTIMES": "process", "MESHCLOUD_HTTP": "127.0.0.1:0"}
SCRIPT = Path(__file__).parents[1] / "apps/ingress/echo_server.py"


def live_routes(agent, workload: str) -> int:
    rows = [r for r in agent.get("/v1/ingress/routes")["routes"]
            if r["target"] == f"{workload}:http"]
    return len(rows[0]["live"]) if rows else -1


def test_the_routes_of_a_workload_and_their_live_replicas(mesh, ui):
    node1, _, node3 = mesh.agents
    node1.cli("run", "shop", "--command", inline_script_line(SCRIPT, "http"),
              "--replicas", "2", "--http", "--domain", "shop.home")
    node1.cli("run", "shopapi", "--command", inline_script_line(SCRIPT, "http"),
              "--http", "--domain", "shop.home/api")
    wait_until(lambda: live_routes(node3, "shop") == 2 and live_routes(node3, "shopapi") == 1,
               90, interval=0.3, message="both routes live on node 3")

    page = ui.open(node3, "/ui/workloads")
    card = page.locator('#workloads .workload[data-workload="shop"]')
    route = card.locator('.route[data-host="shop.home"]')
    expect(route).to_have_attribute("data-prefix", "/", timeout=15_000)
    expect(route).to_have_attribute("data-live", "2")
    expect(route).to_contain_text("shop.home → shop:http 2/2 live")
    api = page.locator('#workloads .workload[data-workload="shopapi"] .route')
    expect(api).to_have_attribute("data-prefix", "/api")
    expect(api).to_contain_text("shop.home/api → shopapi:http 1/1 live")
    assert card.locator(".route").count() == 1  # the /api route is shopapi's, not shop's

    node1.cli("scale", "shop", "0")
    expect(route).to_have_attribute("data-live", "0", timeout=45_000)  # the page polls
    expect(route).to_have_class("route down")
    node1.cli("scale", "shop", "1")
    expect(route).to_have_attribute("data-live", "1", timeout=60_000)
    expect(route).to_contain_text("1/1 live")
