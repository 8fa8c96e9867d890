"""Text output of the CLI: tables that keep what a user needs to type next."""

from __future__ import annotations

import io

from rich.console import Console

from apps.workloads.cli import ps_lines
from meshcloud.ui_text import print_status, unique_prefixes

A = "ab" * 32
B = "abcdef01" + "0" * 56
C = "abcdef02" + "1" * 56


def test_unique_prefixes_are_shortest_and_unique():
    short = unique_prefixes([A, B, C])
    assert short == {A: "ababab", B: "abcdef01", C: "abcdef02"}
    assert unique_prefixes([A]) == {A: "ababab"}
    assert unique_prefixes(["abc"]) == {"abc": "abc"}


def test_status_in_80_columns_prints_whole_unique_node_prefixes():
    member = {"state": "alive", "incarnation": 1, "addresses": ["127.0.0.1:7100"],
              "capacity": {"cpu_cores": 4, "ram_free": 1 << 30, "disk_free": 1 << 34,
                           "arch": "x86_64"}, "last_change": 0}
    status = {"node": {"id": A, "admin": True, "mesh_name": "demo", "mesh_id": "f" * 64,
                       "addresses": ["127.0.0.1:7100"], "api": ["http://127.0.0.1:7200"],
                       "uptime_s": 5},
              "members": [{**member, "id": i} for i in (A, B, C)], "versions": {"x": "1"}}
    out = io.StringIO()
    print_status(status, Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    for prefix in ("ababab", "abcdef01", "abcdef02"):
        assert prefix in text
    assert "…" not in text.split("members")[1].split("\n", 2)[2].split()[0]


def _row(message: str) -> dict:
    return {"name": "web-0", "node": B, "state": "failed", "wanted": True, "restarts": 3,
            "fencing": 7, "updated": 1000, "message": message}


def test_ps_message_uses_the_terminal_width_and_is_whole_in_a_pipe():
    message = "start failed: " + "x" * 150
    piped = ps_lines([_row(message)], 2000, None)
    assert piped[1].endswith(message)
    wide = ps_lines([_row(message)], 2000, 250)
    assert wide[1].endswith(message) and len(wide[1]) <= 250
    narrow = ps_lines([_row(message)], 2000, 100)
    assert narrow[1].endswith("…") and len(narrow[1]) <= 100
    assert narrow[0].split() == ["REPLICA", "NODE", "STATE", "RESTARTS", "FENCE", "UPDATED",
                                 "MESSAGE"]
