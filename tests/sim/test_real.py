"""`python -m sim run ... --real`: real agents in network namespaces, real faults, no leftovers."""

from __future__ import annotations

import os
import subprocess

import pytest

from sim.netns import leftovers
from sim.real import run_real
from sim.scenario import parse

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow]

if os.geteuid() != 0:
    pytest.skip("network namespaces need root", allow_module_level=True)


def test_eight_agents_three_killed_survivors_converge_nothing_left_behind(tmp_path):
    # the crash 17 s before the end: twice the 8 s detection bound; every survivor must
    # have seen every crash (observations == 15) and every view must match the truth
    # within 15 s (convergence), judged for split brain from 8 + 15 s on
    scenario = parse('[scenario]\nname = "crash"\nnodes = 8\nduration = "25s"\n'
                     '[checks]\nconvergence_bound = "15s"\n'
                     '[[faults]]\nat = "8s"\naction = "crash"\ncount = 3\n', "crash.toml")
    result = run_real(scenario, out=tmp_path, progress=False)
    assert result.passed, [(r.name, r.summary, r.examples) for r in result.results]
    crashed = [n for _, n, state in result.trace.truth if state == "crashed"]
    assert len(crashed) == 3
    detection = next(r for r in result.results if r.name == "detection_time")
    assert detection.figures["observations"] == 15  # 5 survivors saw each of 3 die
    split = next(r for r in result.results if r.name == "no_split_brain")
    assert split.figures["judged"] and split.figures["disagreeing_pairs"] == 0
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "summary.md").exists()
    assert leftovers() == {"netns": [], "links": []}
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "mcs" not in namespaces
    agents = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert agents.stdout.strip() == ""


def test_not_root_gives_one_clear_message(monkeypatch):
    from sim.netns import NetnsError, require_root

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="need root"):
        require_root()
