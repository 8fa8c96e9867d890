"""The lanes of a parallel run (tests/conftest.py): every file that starts agents or uses
something machine-wide is in a lane, and the lane table names only files that exist."""

from __future__ import annotations

import re

import pytest

from tests.conftest import AGENT_FILES, MACHINE_LANE, ROOT, lane, lane_scheduling

AGENT_MARK = re.compile(r"pytest\.mark\.(real|podman|netns|browser)\b")


@pytest.mark.parametrize("path", MACHINE_LANE + AGENT_FILES)
def test_every_listed_file_is_a_test_file(path: str) -> None:
    assert (ROOT / path).is_file(), f"{path} is listed in tests/conftest.py but does not exist"


def test_every_file_that_starts_agents_runs_in_a_lane() -> None:
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py"))
    marked = [f for f in files if AGENT_MARK.search((ROOT / f).read_text())]
    assert "tests/realproc/test_workloads.py" in marked and len(marked) > 20
    assert [f for f in marked if lane(f) is None] == []
    for f in files:
        if f.startswith(("tests/realproc/", "tests/ui/")):
            assert lane(f) == ("machine" if f in MACHINE_LANE else "agents"), f


def test_unit_tests_run_in_no_lane() -> None:
    assert lane("tests/gossip/test_core.py") is None
    assert lane("tests/test_lanes.py") is None


def test_the_scheduler_puts_a_lane_in_one_unit_and_other_tests_alone() -> None:
    scheduling = lane_scheduling()
    split = scheduling._split_scope.__get__(scheduling.__new__(scheduling))
    assert split("tests/realproc/test_sites.py::test_deploy") == "agents"
    assert split("tests/ui/test_pages.py::test_x[desktop]") == "agents"
    assert split("tests/realproc/test_workloads.py::test_drain") == "machine"
    assert split("tests/gossip/test_core.py::test_a") == "tests/gossip/test_core.py::test_a"


def test_the_processes_tests_start_reuse_compiled_bytecode() -> None:
    # each agent and CLI child would otherwise compile the project from source again
    import os

    assert "PYTHONDONTWRITEBYTECODE" not in os.environ
