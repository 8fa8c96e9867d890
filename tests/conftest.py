"""Settings for the whole suite, and the lanes of a parallel run (``./dev test`` runs it
on two pytest-xdist workers: ``-n 2 --dist loadgroup``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests judge results, not speed: on a busy machine (every core loaded, as users'
# machines are) a single example can take longer than hypothesis's 200 ms default
# deadline, which would fail a correct test.
settings.register_profile("meshcloud", deadline=None)
settings.load_profile("meshcloud")

ROOT = Path(__file__).resolve().parent.parent

# Every agent and CLI command a test starts is a fresh Python process. With
# PYTHONDONTWRITEBYTECODE set (some shells and CI images set it) each one compiled the
# project's ~330 modules from source again: about 0.5 s of CPU per `meshcloud up` or `join`,
# paid hundreds of times per run. The children write and reuse ``__pycache__`` (gitignored).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

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
    "tests/realproc/test_functions_image.py",      # podman
    "tests/apps/functions/test_image_functions.py",  # podman
    "tests/realproc/test_db.py",             # iptables DROP rules (partition)
    "tests/realproc/test_db_replace.py",     # postgres and a 10 s replace delay: beside
                                             # test_db.py, and it balances the lanes
    "tests/netns/test_nat.py",               # network namespaces, iptables NAT
    "tests/netns/test_vnet_wireguard.py",    # network namespaces, iptables, wireguard-go
    "tests/netns/test_vnet_planes.py",       # idem
    "tests/netns/test_vnet_partition_roam.py",  # idem
    "tests/netns/test_vnet_replicas.py",     # idem, and replicas in their own netns
    "tests/apps/runtimes/test_process_netns.py",  # network namespaces
    "tests/vnet/test_pyplane_netns.py",      # network namespaces
    "tests/vnet/test_pyplane_driver.py",     # TUN devices, network namespaces
    "tests/realproc/test_phone_asleep.py",   # cgroups, SIGSTOP until forgotten (~35 s)
)
"""Test files that use something machine-wide (podman, iptables, netns, every core) or
bound a detection time: they run one after another in the lane ``machine``, beside the
lane ``agents`` (the other agent tests). A worker takes a unit at a time, so the worker
of the shorter lane (``machine``) runs most of the other tests after it: the two take
about the same time."""

AGENT_DIRS = ("tests/realproc/", "tests/ui/")
AGENT_FILES = ("tests/meshcloud/transport/test_tcp_processes.py",
               "tests/apps/functions/test_requirements.py")
"""Files that start agents outside AGENT_DIRS (tests/test_lanes.py finds any missing)."""


def lane(path: str) -> str | None:
    """The lane of a test file (``None``: any worker, any order). Every file that starts
    agents runs whole on one worker, one file at a time in its lane: module-scoped meshes
    start once, and at most two meshes (one per lane) share the machine."""
    if path in MACHINE_LANE:
        return "machine"
    if path.startswith(AGENT_DIRS) or path in AGENT_FILES:
        return "agents"
    return None


def lane_scheduling() -> type:
    """xdist's group scheduling, with the lanes as groups (by path: xdist's ``xdist_group``
    marks are not seen by the pytest this suite runs on). The two lanes are two work units
    (each on one worker, in file order); every other test is a unit of its own."""
    from xdist.scheduler import LoadGroupScheduling

    class LaneScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return LaneScheduling


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    return lane_scheduling()(config, log)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Busy time per worker and per lane (setup, call and teardown summed): the suite's
    wall time is its busiest worker's, so this shows what to move or trim."""
    by_worker: dict[str, float] = {}
    by_lane: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            duration = getattr(report, "duration", None)
            nodeid = getattr(report, "nodeid", "")
            if not isinstance(duration, float) or not nodeid:
                continue
            node = getattr(report, "node", None)
            worker = getattr(getattr(node, "gateway", None), "id", "main")
            by_worker[worker] = by_worker.get(worker, 0.0) + duration
            name = lane(nodeid.split("::", 1)[0]) or "any"
            by_lane[name] = by_lane.get(name, 0.0) + duration
    if not by_worker:
        return
    terminalreporter.write_sep("=", "busy time per worker and per lane")
    for label, totals in (("worker", by_worker), ("lane", by_lane)):
        terminalreporter.write_line(f"{label}: " + ", ".join(
            f"{key} {seconds:.0f}s" for key, seconds in sorted(totals.items())))
