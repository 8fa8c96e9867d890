"""Text output of the CLI: tables that keep what a user needs to type next."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from apps.workloads.cli import ps_lines
from meshcloud.ui_text import print_status, unique_prefixes

REPO = Path(__file__).resolve().parents[2]
"""The checkout, for subprocesses' PYTHONPATH."""

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


def _parser():
    from meshcloud.cli import build_parser, load_cli_verbs

    load_cli_verbs()
    return build_parser()


def test_data_dir_is_accepted_after_the_verb_at_every_level():
    parser = _parser()
    assert parser.parse_args(["init", "--data-dir", "X"]).data_dir == "X"
    assert parser.parse_args(["--data-dir", "Y", "init"]).data_dir == "Y"
    assert parser.parse_args(["--data-dir", "Y", "status"]).data_dir == "Y"
    args = parser.parse_args(["s3", "key", "create", "k", "--data-dir", "Z"])
    assert args.data_dir == "Z" and args.name == "k"


def test_demo_help_describes_every_flag_with_its_default():
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["demo"].format_help()
    for flag in ("--nodes", "--dir", "--base-port", "--restart-dead"):
        assert flag in text
    assert "(default: 3)" in text and "(default: 7100)" in text and "S3" in text


def test_qr_has_a_quiet_zone_and_sets_its_own_colours():
    from meshcloud.cli import qr_text

    plain = qr_text("mc1-example-token", colour=False).splitlines()
    assert plain[0].strip() == "" and plain[1].strip() == ""  # 4 modules = 2 text rows
    assert all(line.startswith("    ") and line.endswith("    ") for line in plain)
    assert any("\u2588" in line for line in plain)
    coloured = qr_text("mc1-example-token", colour=True).splitlines()
    assert all(line.startswith("\x1b[30;107m") and line.endswith("\x1b[0m")
               for line in coloured)
    assert len(coloured) == len(plain)


def test_output_into_a_closed_pipe_is_silent():
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-m", "meshcloud", "version"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # like `| head` having read its lines
    err = child.stderr.read()
    assert child.wait(timeout=60) == 141
    assert err == b""


def test_dev_help_prints_the_usage_only():
    import subprocess
    from pathlib import Path

    dev = Path(__file__).resolve().parents[2] / "dev"
    result = subprocess.run(["bash", str(dev), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert "./dev demo" in result.stdout and "./dev test" in result.stdout
    assert "set -e" not in result.stdout and "#" not in result.stdout


def test_a_verb_module_that_fails_to_import_fails_the_command_line_loudly():
    """One broken service CLI must not silently drop its verbs (or anyone else's)."""
    code = ("import sys; sys.modules['apps.workloads.cli'] = None\n"
            "from meshcloud.cli import main\nsys.exit(main(['ps']))")
    root = str(Path(__file__).parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode != 0
    assert "apps.workloads.cli" in done.stderr
    assert "ModuleNotFoundError" in done.stderr or "ImportError" in done.stderr


def test_every_service_verb_is_registered():
    from meshcloud.cli import COMMANDS, load_cli_verbs

    load_cli_verbs()
    assert {"ps", "run", "bucket", "expose", "policy"} <= set(COMMANDS)
