"""The Workloads pages in Chromium: run from one node's UI, watch it run from another's,
stream its logs, scale, drain a node, remove."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import ui_url

pytest.importorskip("apps.workloads", reason="the workload service is not built yet")

pytestmark = [pytest.mark.browser, pytest.mark.real]

MESH_ENV = {"MESHCLOUD_RUNTIMES": "process"}
"""The process runtime: what every node (phones included) has, and quick to start."""
TICKER = "sh -c 'while true; do echo tick-$(hostname)-$$; sleep 0.5; done'"


def test_run_from_one_node_see_it_running_on_another(mesh, ui):
    node1, node2, _ = mesh.agents
    page = ui.open(node1, "/ui/workloads")
    form = page.locator("#run-form")
    expect(form).to_be_visible()
    form.locator("input[name=name]").fill("ticker")
    form.locator("select[name=runtime]").select_option("process")
    form.locator("input[name=command]").fill(TICKER)
    form.locator("input[name=replicas]").fill("2")
    form.locator("button[type=submit]").click()
    expect(page.locator('#workloads .workload[data-workload="ticker"]')).to_be_visible(
        timeout=10_000)

    other = ui.open(node2, "/ui/workloads")
    card = other.locator('#workloads .workload[data-workload="ticker"]')
    expect(card).to_have_attribute("data-running", "2", timeout=30_000)
    expect(card).to_have_attribute("data-desired", "2")
    expect(card.locator('.replica[data-state="running"]')).to_have_count(2)
    nodes = {card.locator(".replica").nth(i).get_attribute("data-node") for i in range(2)}
    assert len(nodes) == 2 and nodes <= {a.node_id for a in mesh.agents}

    # logs stream into node 2's page, whichever nodes run the replicas
    card.locator("a.title").click()
    logs = other.locator("#log-output")
    expect(logs).to_contain_text(re.compile(r"ticker-0 \| tick-"), timeout=20_000)
    expect(logs).to_contain_text(re.compile(r"ticker-1 \| tick-"), timeout=20_000)
    before = len(logs.inner_text())
    other.wait_for_function(
        f"document.getElementById('log-output').textContent.length > {before}",
        timeout=10_000)  # still following: new lines keep arriving

    # scale down from the workload's own page
    other.locator('#workload form.inline input[name=replicas]').fill("1")
    other.locator('#workload form.inline button[type=submit]').click()
    expect(other.locator('#workload tr[data-replica="0"]')).to_be_visible()
    other.goto(ui_url(node2) + "/ui/workloads")
    card = other.locator('#workloads .workload[data-workload="ticker"]')
    expect(card).to_have_attribute("data-desired", "1", timeout=10_000)
    expect(card).to_have_attribute("data-running", "1", timeout=30_000)


def test_drain_moves_replicas_off_a_node_then_remove(mesh, ui):
    node1, _, node3 = mesh.agents
    page = ui.open(node3, "/ui/workloads")
    card = page.locator('#workloads .workload[data-workload="ticker"]')
    expect(card).to_have_attribute("data-running", "1", timeout=30_000)
    holder = card.locator(".replica").first.get_attribute("data-node")
    row = page.locator(f'#drain-nodes tr[data-node="{holder}"]')
    drain = row.locator("button", has_text="Drain")
    drain.click()
    expect(drain).to_have_text("Sure? Drain")  # a second tap confirms
    drain.click()
    expect(row).to_have_attribute("data-draining", "yes", timeout=10_000)
    replica = card.locator(".replica").first
    expect(replica).not_to_have_attribute("data-node", holder, timeout=45_000)
    expect(replica).to_have_attribute("data-state", "running", timeout=45_000)
    expect(row.locator("td").nth(1)).to_have_text("0", timeout=10_000)
    row.locator("button", has_text="Undrain").click()
    expect(row).to_have_attribute("data-draining", "no", timeout=10_000)

    remove = card.locator("button", has_text="Remove")
    remove.click()
    expect(remove).to_have_text("Sure? Remove")
    page.evaluate("refresh(document.getElementById('workloads'))")  # as a poll would
    expect(remove).to_have_text("Sure? Remove")  # the armed tap survives the refresh
    remove.click()
    expect(page.locator('#workloads .workload[data-workload="ticker"]')).to_have_count(
        0, timeout=10_000)
    assert node1.get("/v1/workloads")["workloads"] == []
