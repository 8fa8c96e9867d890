"""The Mesh page follows membership live: a node killed with SIGKILL turns suspect, then
dead, on another node's page without a reload (server-sent events)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.real]

SUSPECT_WITHIN = 20_000
"""ms: SWIM suspects a silent member after a failed probe round (a few seconds)."""
DEAD_WITHIN = 60_000
"""ms: the suspicion timeout (scaled by log N) runs out and the member is declared dead."""


def test_mesh_page_shows_a_killed_node_suspect_then_dead_without_reload(mesh, ui):
    node1, node2, node3 = mesh.agents
    page = ui.open(node2)
    cards = page.locator("#members .member")
    expect(cards).to_have_count(3, timeout=15_000)
    expect(page.locator('#members .member[data-state="alive"]')).to_have_count(3,
                                                                            timeout=15_000)
    for agent in (node1, node2, node3):
        expect(page.locator(f'#members .member[data-node="{agent.node_id}"]')).to_be_visible()
    expect(page.locator(f'.member[data-node="{node2.node_id}"] .badge')).to_have_text(
        "this node")
    expect(page.locator(".picture .node")).to_have_count(3)
    expect(page.locator("#live")).to_have_class("live on", timeout=10_000)

    # every state node 3's card shows, in order (a short suspicion is not missed between
    # two polls of a locator); a reload would lose this record
    page.evaluate("""id => {
        window.__seen = [];
        const note = () => {
            const card = document.querySelector(`#members .member[data-node="${id}"]`);
            const state = card && card.dataset.state;
            const seen = window.__seen;
            if (state && seen[seen.length - 1] !== state) seen.push(state);
        };
        new MutationObserver(note).observe(document.getElementById("mesh"),
                                           {childList: true, subtree: true, attributes: true});
        note();
    }""", node3.node_id)
    node3.kill()

    page.wait_for_function("() => window.__seen.includes('suspect')", timeout=SUSPECT_WITHIN)
    page.wait_for_function("() => window.__seen.includes('dead')", timeout=DEAD_WITHIN)
    seen = page.evaluate("window.__seen")
    assert seen[0] == "alive" and seen.index("suspect") < seen.index("dead"), seen
    card = page.locator(f'#members .member[data-node="{node3.node_id}"]')
    expect(card).to_have_attribute("data-state", "dead")
    expect(card.locator(".pill")).to_have_text("dead")
    expect(page.locator(f'.picture .node[data-node="{node3.node_id}"]')).to_have_class(
        re.compile(r"\bstate-dead\b"))
    expect(page.locator('#members .member[data-state="alive"]')).to_have_count(2)
    expect(page.locator('[data-count="dead"]')).to_have_text("1 dead")
