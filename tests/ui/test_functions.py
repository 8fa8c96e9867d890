"""The Functions page in Chromium: a function deployed through node 1's CLI shows on
node 2's page; the invoke form runs it with a payload and shows the result and that
invocation's log lines; the counters (invocations, errors, cold starts, instances per
node) follow; a zip uploaded from the page becomes a function; rollback from the page."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from sim.agents import Agent, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.real]

HANDLER = '''
def handle(event, context):
    event = event or {}
    if event.get("fail"):
        raise ValueError("asked to fail")
    print("saying hello to", event.get("name"))
    return {"greeting": "hello " + str(event.get("name")), "version": VERSION}
'''


def current(agent: Agent, name: str) -> int | None:
    fns = {f["name"]: f for f in agent.get("/v1/functions")["functions"]}
    return fns[name]["current"] if name in fns else None


def expected_failure(ui, status: int) -> None:
    """The browser logs a failed fetch as a console error: take the one this step
    expects off the list (any other still fails the test)."""
    mark = f"status of {status} "
    wait_until(lambda: any(mark in e for e in ui.errors), 10,
               message=f"the browser saw the {status}")
    ui.errors[:] = [e for e in ui.errors if mark not in e]


def test_functions_page_invoke_logs_stats_zip_rollback(mesh, ui, artifacts, tmp_path: Path):
    node1, node2, node3 = mesh.agents
    page = ui.open(node2, "/ui/functions")
    expect(page.locator("nav a[href='/ui/functions']")).not_to_have_class(
        re.compile(r"\bsoon\b"))
    expect(page.locator("#functions .empty-state")).to_be_visible()

    src = tmp_path / "hello"
    src.mkdir()
    (src / "main.py").write_text(HANDLER + "VERSION = 1\n")
    node1.cli("fn", "deploy", "hello", str(src))
    (src / "main.py").write_text(HANDLER + "VERSION = 2\n")
    node1.cli("fn", "deploy", "hello", str(src))
    wait_until(lambda: current(node2, "hello") == 2, 10, message="v2 on node 2")
    card = page.locator('#functions .function[data-function="hello"]')
    expect(card).to_have_attribute("data-current", "2", timeout=10_000)
    expect(card.locator(".version")).to_have_count(2)
    expect(card.locator(".access")).to_have_text("key only")

    page.reload()  # the invoke form lists the functions known when the page rendered
    page.locator("#fn-invoke-name").select_option("hello")
    page.locator("#fn-invoke-form textarea").fill('{"name": "mesh"}')
    page.locator("#fn-invoke-form button[type=submit]").click()
    expect(page.locator("#fn-result-status")).to_have_text("ok", timeout=30_000)
    expect(page.locator("#fn-result-body")).to_contain_text('"greeting": "hello mesh"')
    expect(page.locator("#fn-result-body")).to_contain_text('"version": 2')
    request_id = page.locator("#fn-result").get_attribute("data-request")
    assert request_id and re.fullmatch(r"[0-9a-f]{16}", request_id)
    logs = page.locator("#fn-result-logs")
    expect(logs).to_contain_text(f"{request_id} | saying hello to mesh", timeout=10_000)

    card = page.locator('#functions .function[data-function="hello"]')
    expect(card.locator(".invocations")).to_have_attribute("data-invocations", "1",
                                                           timeout=15_000)
    expect(card.locator(".cold")).to_have_attribute("data-cold", "1")
    expect(card.locator(".instances")).to_have_attribute("data-instances", "1")
    expect(card.locator("[data-node-instances]")).to_have_count(1)

    page.locator("#fn-invoke-form textarea").fill('{"name": "again"}')
    page.locator("#fn-invoke-form button[type=submit]").click()
    expect(page.locator("#fn-result-body")).to_contain_text("hello again", timeout=30_000)
    page.locator("#fn-invoke-form textarea").fill('{"fail": true}')
    page.locator("#fn-invoke-form button[type=submit]").click()
    expect(page.locator("#fn-result-status")).to_have_text("failed 502", timeout=30_000)
    expect(page.locator("#fn-result-body")).to_contain_text("asked to fail")
    expected_failure(ui, 502)
    failed_id = page.locator("#fn-result").get_attribute("data-request")
    expect(page.locator("#fn-result-logs")).to_contain_text(
        f"{failed_id} | ", timeout=10_000)  # the traceback, tagged with its id
    expect(page.locator("#fn-result-logs")).not_to_contain_text("saying hello")
    expect(card.locator(".invocations")).to_have_attribute("data-invocations", "3",
                                                           timeout=15_000)
    expect(card.locator(".errors")).to_have_attribute("data-errors", "1")
    expect(card.locator(".cold")).to_have_attribute("data-cold", "1")  # warm reuse

    # the first invocation's logs from its row in the recent list
    row = card.locator(f'.invocation[data-request="{request_id}"]')
    row.locator("button.show-logs").click()
    expect(page.locator("#fn-logs")).to_contain_text(f"{request_id} | saying hello to mesh",
                                                     timeout=10_000)
    expect(page.locator("#fn-logs")).not_to_contain_text("again")
    page.screenshot(path=str(artifacts / "functions.png"), full_page=True)

    # a zipped directory uploaded from the page becomes a function
    archive = tmp_path / "zipped.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("zipped/main.py", HANDLER + "VERSION = 7\n")
    archive.write_bytes(buf.getvalue())
    form = page.locator("#fn-deploy-form")
    page.locator("#deploy-panel summary").click()
    form.locator("input[name=name]").fill("zipped")
    form.locator("input[name=zip]").set_input_files(str(archive))
    form.locator("button[type=submit]").click()
    expect(page.locator('#functions .function[data-function="zipped"]')).to_be_visible(
        timeout=15_000)
    wait_until(lambda: current(node3, "zipped") == 1, 10, message="zipped on node 3")
    page.locator("#fn-invoke-name").select_option("zipped")
    page.locator("#fn-invoke-form textarea").fill('{"name": "zip"}')
    page.locator("#fn-invoke-form button[type=submit]").click()
    expect(page.locator("#fn-result-body")).to_contain_text('"version": 7', timeout=30_000)

    # a bad zip is refused with the reason, and changes nothing
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    form.locator("input[name=name]").fill("broken")
    form.locator("input[name=zip]").set_input_files(str(bad))
    form.locator("button[type=submit]").click()
    expect(page.locator("#fn-deploy-error")).to_contain_text("not a zip archive")
    expected_failure(ui, 400)
    assert current(node1, "broken") is None

    card.locator("button.rollback", has_text="Roll back to v1").click()
    expect(card).to_have_attribute("data-current", "1", timeout=10_000)
    wait_until(lambda: current(node3, "hello") == 1, 10, message="rollback everywhere")
    for name in ("hello", "zipped"):
        node1.api_call("DELETE", f"/v1/functions/{name}")
