"""The web UI's view models: pure functions from API data to what the templates draw."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.workloads.ui import replica_summary
from blobstore.ui import crumbs, layout_view, parse_after
from meshcloud.web.events import event_view, fact_text, time_fact
from meshcloud.web.mesh import capacity_bars, label_map, mesh_picture, totals
from meshcloud.web.render import fmt_bytes, merge_nav, nav_groups, render_text

GIB = 1 << 30


def member(i: int, state: str = "alive", **cap: object) -> dict[str, object]:
    return {"id": f"{i:064x}", "state": state, "incarnation": 0, "addresses": [],
            "capacity": cap, "last_change": 0}


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (-1, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
    (150 * 1024, "150 KiB"), (5 * GIB // 2, "2.5 GiB"),
])
def test_fmt_bytes(n, text):
    assert fmt_bytes(n) == text


def test_capacity_bars_read_what_is_taken_and_skip_what_is_unknown():
    bars = capacity_bars({"cpu_cores": 4, "load": 3.0, "ram_total": 8 * GIB,
                          "ram_free": 2 * GIB, "disk_free": 10 * GIB, "battery": -1})
    assert [b["label"] for b in bars] == ["Load", "RAM", "Disk"]  # battery -1: none
    assert bars[0]["text"] == "3.0 on 4 cores" and "load average" in bars[0]["title"]
    cpu, ram, disk = bars
    assert cpu["percent"] == 75 and cpu["level"] == "mid"
    assert ram["percent"] == 75 and ram["text"] == "2.0 GiB free"
    assert disk["level"] == "relative" and disk["percent"] == 0  # no roomiest given


def test_capacity_bars_overload_is_capped_and_battery_shows_charge():
    bars = capacity_bars({"cpu_cores": 2, "load": 9.0, "battery": 15, "on_ac": False})
    assert bars[0]["percent"] == 100 and bars[0]["level"] == "high"
    assert bars[1]["label"] == "Battery" and bars[1]["level"] == "battery-low"
    charging = capacity_bars({"battery": 15, "on_ac": True})[0]
    assert charging["level"] == "battery" and "charging" in charging["text"]


def test_disk_bar_uses_the_disk_size_when_known_else_the_roomiest_node():
    known = capacity_bars({"disk_free": 25 * GIB, "disk_total": 100 * GIB})[0]
    assert known["percent"] == 75 and known["level"] == "mid"
    relative = capacity_bars({"disk_free": 25 * GIB}, roomiest_disk=100 * GIB)[0]
    assert relative["percent"] == 25 and relative["level"] == "relative"


def test_labels_as_mapping_or_pairs():
    assert label_map({"room": "attic"}) == {"room": "attic"}
    assert label_map([["room", "attic"], ("gpu", "yes"), "junk"]) == {"room": "attic",
                                                                      "gpu": "yes"}
    assert label_map(None) == {}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 256),
                          st.sampled_from(["alive", "suspect", "dead", "left"])),
                min_size=1, max_size=60))
def test_picture_circles_stay_inside_and_do_not_overlap(nodes):
    members = [member(i, state, cpu_cores=c, ram_total=r * GIB)
               for i, (c, r, state) in enumerate(nodes)]
    picture = mesh_picture(members, me=members[0]["id"])
    circles = picture["circles"]
    assert [c["id"] for c in circles] == [m["id"] for m in members]
    assert [c["state"] for c in circles] == [m["state"] for m in members]
    for c in circles:
        assert c["r"] <= c["x"] <= picture["width"] - c["r"]
        assert c["r"] <= c["y"] <= picture["height"] - c["r"]
    for i, a in enumerate(circles):
        for b in circles[i + 1:]:
            gap = math.dist((a["x"], a["y"]), (b["x"], b["y"]))
            assert gap >= a["r"] + b["r"] - 0.2
    alive = sum(1 for m in members if m["state"] == "alive")
    assert len(picture["lines"]) == (alive * (alive - 1) // 2 if alive <= 40 else 0)


def test_bigger_machines_draw_bigger_circles():
    small, big = member(1, cpu_cores=1, ram_total=GIB), member(2, cpu_cores=16,
                                                               ram_total=64 * GIB)
    circles = mesh_picture([small, big])["circles"]
    assert circles[1]["r"] > circles[0]["r"]


def test_totals_count_only_live_nodes():
    tiles = totals([member(1, cpu_cores=4, ram_total=8 * GIB, ram_free=GIB),
                    member(2, "dead", cpu_cores=8, ram_total=8 * GIB, ram_free=GIB)])
    assert tiles[0] == {"label": "Nodes alive", "value": "1 of 2"}
    assert {"label": "CPU", "value": "4 cores"} in tiles


def test_totals_count_a_machine_shared_by_nodes_once():
    shared = {"cpu_cores": 2, "ram_total": 8 * GIB, "ram_free": 4 * GIB, "disk_free": 10 * GIB,
              "machine": "aaaa"}
    tiles = totals([member(1, **shared), member(2, **shared),
                    member(3, **{**shared, "machine": "bbbb"})])
    assert tiles[0] == {"label": "Nodes alive", "value": "3 of 3", "sub": "on 2 machines"}
    assert {"label": "CPU", "value": "4 cores"} in tiles
    assert {"label": "RAM free", "value": "8.0 GiB", "sub": "of 16.0 GiB"} in tiles


def test_repeated_member_updates_fold_into_one_line_with_a_count():
    from meshcloud.web.events import fold_repeats

    def ev(kind, peer, at):
        return event_view({"kind": kind, "at": at, "node": "n", "peer": peer})

    views = fold_repeats([ev("member.updated", "p1", 5), ev("member.updated", "p1", 4),
                          ev("member.updated", "p1", 3), ev("member.updated", "p2", 2),
                          ev("member.failed", "p1", 1), ev("member.failed", "p1", 0)])
    assert [(v["kind"], v["peer"], v["repeat"]) for v in views] == [
        ("member.updated", "p1", 3), ("member.updated", "p2", 1),
        ("member.failed", "p1", 1), ("member.failed", "p1", 1)]
    assert views[0]["at"] == 5  # the newest of the run


def test_event_facts_shorten_ids_and_mark_times():
    node = "ab" * 32
    view = event_view({"seq": 1, "kind": "member.failed", "at": 5, "node": node,
                       "peer": "cd" * 32, "expires_at": 1700000000000, "why": "x" * 100})
    assert view["family"] == "member"
    facts = {k: (text, ms) for k, text, _, ms in view["facts"]}
    assert facts["peer"] == ("cdcdcdcd", None)
    assert facts["expires_at"][1] == 1700000000000
    assert facts["why"][0].endswith("...") and len(facts["why"][0]) == 80
    assert "node" not in facts and "seq" not in facts
    assert fact_text(["a", "b"]) == "a, b"
    assert time_fact("at_home", 5) is None and time_fact("done_at", True) is None


def test_event_rendering_escapes_facts():
    html = render_text("_event.html", e=event_view(
        {"kind": "object.put", "at": 1, "node": "n", "key": "<script>alert(1)</script>"}))
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_crumbs_and_listing_positions():
    assert crumbs("photos", "2024/summer/") == [
        {"label": "photos", "prefix": ""}, {"label": "2024", "prefix": "2024/"},
        {"label": "summer", "prefix": "2024/summer/"}]
    assert parse_after("k:a/b").value == "a/b" and parse_after("k:a").kind.value == "k"
    assert parse_after("p:x/").kind.value == "p"
    assert parse_after("") is None and parse_after("zz") is None


def layout(shards: list[list[bool]], k: int = 1, m: int = 2) -> dict[str, object]:
    chunks = [{"index": i, "ok": all(row) and len(row) == k + m,
               "shards": [{"index": j, "node": f"n{j}", "live": live}
                          for j, live in enumerate(row)]}
              for i, row in enumerate(shards)]
    return {"k": k, "m": m, "chunks": chunks, "inline": False}


def test_layout_health_is_its_worst_chunk():
    assert layout_view(layout([[True] * 3, [True] * 3]))["health"] == "ok"
    degraded = layout_view(layout([[True] * 3, [True, False, True]]))
    assert degraded["health"] == "degraded"
    assert [c["state"] for c in degraded["chunk_views"]] == ["ok", "degraded"]
    assert {h["node"]: h["live"] for h in degraded["holders"]} == {
        "n0": True, "n1": False, "n2": True}
    lost = layout_view(layout([[False, False, True, True, False, False]], k=4, m=2))
    assert lost["health"] == "lost"


def test_replica_summary_desired_versus_running():
    def rows(*states: str) -> list[dict[str, object]]:
        return [{"wanted": True, "state": s, "restarts": 1} for s in states]

    assert replica_summary({"desired": 2, "replicas": rows("running", "running")}) == {
        "desired": 2, "running": 2, "restarts": 2, "health": "running", "percent": 100}
    assert replica_summary({"desired": 2, "replicas": rows("running", "pending")})[
        "health"] == "starting"
    assert replica_summary({"desired": 2, "replicas": rows("running", "node down")})[
        "health"] == "degraded"
    stopped = replica_summary({"desired": 0, "replicas": []})
    assert stopped["health"] == "stopped" and stopped["percent"] == 0
    unwanted = [{"wanted": False, "state": "running", "restarts": 0}]
    assert replica_summary({"desired": 1, "replicas": unwanted})["running"] == 0


def test_nav_keeps_its_order_and_groups():
    base = [("mesh", "Mesh", "/ui/", True), ("storage", "Storage", "/ui/storage", False)]
    merged = merge_nav(base, [("storage", "Storage", "/ui/storage", True),
                              ("sites", "Sites", "/ui/sites", True)])
    assert merged == [base[0], ("storage", "Storage", "/ui/storage", True),
                      ("sites", "Sites", "/ui/sites", True)]
    groups = nav_groups(merged, "storage")
    assert [g["name"] for g in groups] == ["Cluster", "Data", "Compute"]
    assert groups[1]["items"][0]["active"] is True


def test_byte_facts_read_as_sizes():
    facts = {k: text for k, text, _, _ in event_view(
        {"kind": "object.put", "at": 1, "node": "n", "size": 5 * 1024 * 1024, "parts": 5})[
        "facts"]}
    assert facts == {"size": "5.0 MiB", "parts": "5"}


def test_a_dead_node_is_not_shown_as_accepting_work():
    from apps.workloads.ui import TEMPLATES
    from meshcloud.web.render import _env, use_templates

    use_templates(TEMPLATES)

    def row(state):
        return {"id": "ab" * 32, "state": state, "replicas": 0, "runtimes": ["process"],
                "draining": False, "me": False, "progress": None}

    html = _env.get_template("_drain.html").render(nodes=[row("dead")])
    assert "accepting</span>" not in html.replace("not accepting", "")
    assert "dead: not accepting" in html and "Drain</button>" not in html
    html = _env.get_template("_drain.html").render(nodes=[row("alive")])
    assert '"pill state-alive">accepting' in html and "Drain</button>" in html
