"""The lanes of a parallel run (tests/conftest.py): every file that starts agents or uses
something machine-wide is in a lane, and the lane table names only files that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MACHINE_LANE, ROOT, lane


@pytest.mark.parametrize("path", MACHINE_LANE)
def test_every_machine_lane_entry_is_a_test_file(path: str) -> None:
    assert (ROOT / path).is_file(), f"{path} is in MACHINE_LANE but does not exist"


def test_every_agent_test_file_runs_in_a_lane() -> None:
    files = [p.relative_to(ROOT).as_posix() for d in ("tests/realproc", "tests/ui")
             for p in sorted((ROOT / d).glob("test_*.py"))]
    assert len(files) > 20
    assert {f: lane(f, set()) for f in files} == {
        f: "machine" if f in MACHINE_LANE else "agents" for f in files}


def test_marks_put_a_file_elsewhere_in_a_lane_and_unit_tests_in_none() -> None:
    assert lane("tests/meshcloud/transport/test_tcp_processes.py", {"real"}) == "agents"
    assert lane("tests/apps/runtimes/test_podman.py", {"podman"}) == "machine"
    assert lane("tests/gossip/test_core.py", set()) is None
    assert lane("tests/gossip/test_core.py", {"trio"}) is None


def test_this_run_marked_the_lanes(request: pytest.FixtureRequest) -> None:
    """The collection hook ran: a file of the machine lane carries its xdist group."""
    session = request.session
    grouped = {Path(str(i.path)).resolve().relative_to(ROOT).as_posix(): m.args
               for i in session.items for m in i.iter_markers("xdist_group")}
    here = Path(__file__).resolve().relative_to(ROOT).as_posix()
    assert here not in grouped
    for path, args in grouped.items():
        assert args == (lane(path, set()) or "agents",), path
