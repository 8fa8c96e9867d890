"""Settings for the whole suite, and the lanes of a parallel run (``./dev test`` runs it
with pytest-xdist, ``-n 2 --dist loadgroup``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests judge results, not speed: on a busy machine (every core loaded, as users'
# machines are) a single example can take longer than hypothesis's 200 ms default
# deadline, which would fail a correct test.
settings.register_profile("meshcloud", deadline=None)
settings.load_profile("meshcloud")

ROOT = Path(__file__).resolve().parent.parent

MACHINE_LANE = (
    "tests/realproc/test_workloads.py",      # podman stores, iptables DROP rules
    "tests/realproc/test_images.py",         # podman
    "tests/realproc/test_demo.py",           # `meshcloud demo`: podman, a block of ports
    "tests/realproc/test_starvation.py",     # busy loops on every core
    "tests/realproc/test_membership.py",     # detection within seconds: not beside the hogs
    "tests/realproc/test_foundation.py",     # idem
    "tests/sim/test_real.py",                # network namespaces, checks none is left over
    "tests/apps/runtimes/test_podman.py",    # podman
    "tests/apps/workloads/test_ondemand.py", # podman
    "tests/realproc/test_storage_heal.py",   # no shared resource: balances the two lanes
)
"""Test files that use something machine-wide (podman, iptables, netns, every core) or
bound a detection time: they run one after another in the lane ``machine``, beside the
lane ``agents`` (the other agent tests). The two lanes take about the same time."""

AGENT_DIRS = ("tests/realproc/", "tests/ui/")
AGENT_MARKS = ("real", "podman", "netns", "browser")


def lane(path: str, marks: set[str]) -> str | None:
    """The xdist group of a test file (``None``: any worker, any order). Every file that
    starts agents runs whole on one worker, one file at a time in its lane: module-scoped
    meshes start once, and at most two meshes (one per lane) share the machine."""
    if path in MACHINE_LANE:
        return "machine"
    if path.startswith(AGENT_DIRS) or marks & set(AGENT_MARKS):
        return "agents"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
        group = lane(path, {m.name for m in item.iter_markers()})
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
