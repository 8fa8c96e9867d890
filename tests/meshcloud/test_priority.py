"""The event loop's priority (meshcloud/priority.py): raised for the loop thread only, when
permitted; never inherited by another thread or a child process; one clear note when not
permitted. The processes that change priorities are subprocesses of the test, so that
pytest's own threads keep theirs; the agent itself is tested in
tests/realproc/test_loop_priority.py."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from meshcloud import priority
from meshcloud.config import NodeConfig
from meshcloud.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")


@pytest.fixture(autouse=True)
def _forget():
    yield
    priority.forget()


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


# --- raise_loop's decisions, with the system calls faked ----------------------------------


def test_not_permitted_leaves_everything_as_it_was_and_says_why():
    calls = []

    def refuse(which: int, who: int, value: int) -> None:
        calls.append(value)
        raise PermissionError(13, "Permission denied")

    result = priority.raise_loop(5, get=lambda which, who: 3, set_=refuse, platform="linux")
    assert calls == [-2]  # one try, at base - boost
    assert not result.applied and result.loop == result.base == 3
    assert "not permitted" in result.note and "CAP_SYS_NICE" in result.note
    assert "RLIMIT_NICE >= 22" in result.note
    assert threading.getprofile() is None  # no thread hook left behind
    assert priority.current() == result


def test_off_and_elsewhere_change_nothing():
    def never(which: int, who: int, value: int) -> None:
        raise AssertionError("setpriority called")

    off = priority.raise_loop(0, get=lambda which, who: 0, set_=never, platform="linux")
    assert not off.applied and "loop_priority is 0" in off.note
    mac = priority.raise_loop(5, get=lambda which, who: 0, set_=never, platform="darwin")
    assert not mac.applied and "Linux only" in mac.note
    assert threading.getprofile() is None


def test_the_boost_never_goes_past_minus_20():
    asked = []
    result = priority.raise_loop(5, get=lambda which, who: -18,
                                 set_=lambda which, who, value: asked.append(value),
                                 platform="linux")
    assert asked == [-20] and result.applied and result.loop == -20 and result.base == -18
    assert result.status() == {"nice": -20, "base_nice": -18, "raised": True, "scheduler": "fair",
                               "priority_note": result.note}


def test_the_setting_comes_from_the_environment_then_the_config():
    assert priority.boost_setting(5, {}) == 5
    assert priority.boost_setting(5, {priority.ENV_VAR: "0"}) == 0
    assert priority.boost_setting(5, {priority.ENV_VAR: " 10 "}) == 10
    assert priority.boost_setting(7, {priority.ENV_VAR: ""}) == 7
    for bad in ("-1", "21", "high", "5.5"):
        with pytest.raises(ConfigError, match=priority.ENV_VAR):
            priority.boost_setting(5, {priority.ENV_VAR: bad})
    with pytest.raises(ConfigError, match="loop_priority"):
        NodeConfig(loop_priority=21)
    assert NodeConfig().loop_priority == priority.LOOP_BOOST


# --- real threads and processes (in a child Python, which may change its priorities) -------

PROBE = textwrap.dedent("""
    import json, os, subprocess, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    import trio
    from meshcloud import bulk, priority

    def nice(tid=0):
        return os.getpriority(os.PRIO_PROCESS, tid)

    def child_nice(argv_runner):
        out = argv_runner(["/bin/cat", "/proc/self/stat"])
        return int(out.rsplit(b")", 1)[1].split()[16])  # field 19 of the whole line

    def thread_nice():
        seen = []
        t = threading.Thread(target=lambda: seen.append(nice()))
        t.start(); t.join()
        return seen[0]

    if os.environ.get("PROBE_NO_NICE_LIMIT"):  # no RLIMIT_NICE headroom either
        import resource
        resource.setrlimit(resource.RLIMIT_NICE, (0, 0))

    async def main():
        result = priority.raise_loop(int(sys.argv[1]))
        out = {"applied": result.applied, "note": result.note, "base": result.base,
               "loop": nice()}
        out["thread"] = thread_nice()
        with ThreadPoolExecutor(2) as pool:
            out["pool"] = pool.submit(nice).result()
        out["to_thread"] = await trio.to_thread.run_sync(nice)
        stat = ["/bin/cat", "/proc/self/stat"]
        done = await trio.run_process(stat, capture_stdout=True)
        out["trio_process"] = int(done.stdout.rsplit(b")", 1)[1].split()[16])
        # a bulk item runs low; the same (cached) worker thread is at the base after it
        out["bulk"] = await bulk.run_bulk(nice)
        out["after_bulk"] = await trio.to_thread.run_sync(nice)
        done = await trio.run_process(stat, capture_stdout=True)
        out["trio_process_after_bulk"] = int(done.stdout.rsplit(b")", 1)[1].split()[16])
        run = lambda argv: subprocess.run(argv, capture_output=True, check=True).stdout
        out["popen"] = child_nice(lambda argv: priority.popen(
            argv, stdout=subprocess.PIPE).communicate()[0])
        out["run"] = child_nice(lambda argv: priority.run(argv, capture_output=True).stdout)
        out["bare_popen"] = child_nice(run)  # what the helpers prevent
        out["loop_after"] = nice()
        print(json.dumps(out))

    trio.run(main)
""")


def _probe(boost: int, *, prefix: tuple[str, ...] = (), env: dict | None = None) -> dict:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(boost)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _may_raise() -> bool:
    return LINUX and subprocess.run(
        [sys.executable, "-c", "import os; os.setpriority(os.PRIO_PROCESS, 0, "
         "os.getpriority(os.PRIO_PROCESS, 0) - 5)"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _may_raise(), reason="needs Linux and the right to raise a priority")
def test_only_the_loop_thread_is_raised_and_nothing_inherits_it():
    out = _probe(5)
    base = out["base"]
    assert out["applied"], out["note"]
    assert out["loop"] == out["loop_after"] == base - 5
    assert out["thread"] == out["pool"] == out["to_thread"] == base
    assert out["bulk"] == min(19, base + 10)
    assert out["after_bulk"] == out["trio_process_after_bulk"] == base
    assert out["trio_process"] == out["popen"] == out["run"] == base
    assert out["bare_popen"] == base - 5  # the inheritance the helpers exist for


@pytest.mark.skipif(not LINUX or shutil.which("setpriv") is None,
                    reason="needs Linux and setpriv (util-linux) to drop CAP_SYS_NICE")
def test_unprivileged_nothing_is_raised_and_nothing_breaks():
    # without CAP_SYS_NICE (even as root) and with RLIMIT_NICE 0: a phone, a plain user
    out = _probe(5, prefix=("setpriv", "--bounding-set=-sys_nice"),
                 env={"PROBE_NO_NICE_LIMIT": "1"})
    base = out["base"]
    assert not out["applied"] and "not permitted" in out["note"]
    assert out["loop"] == out["loop_after"] == base
    assert out["thread"] == out["pool"] == out["to_thread"] == base
    assert out["trio_process"] == out["popen"] == out["run"] == out["bare_popen"] == base
    # (a worker thread that ran a bulk item cannot come back up without the privilege: it
    # stays low, and so would a process trio started from it; docs/architecture.md)
    assert out["bulk"] == out["after_bulk"] == min(19, base + 10)


@pytest.mark.skipif(not _may_raise(), reason="needs Linux and the right to raise a priority")
def test_at_base_puts_the_thread_back_after():
    script = textwrap.dedent("""
        import json, os
        from meshcloud import priority
        nice = lambda: os.getpriority(os.PRIO_PROCESS, 0)
        priority.raise_loop(5)
        before = nice()
        with priority.at_base():
            inside = nice()
        print(json.dumps([before, inside, nice()]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    before, inside, after = json.loads(done.stdout)
    assert inside == before + 5 and after == before


RT_PROBE = textwrap.dedent("""
    import json, os, subprocess, sys, threading
    import trio
    from meshcloud import bulk, priority

    def policy_of_stat(text):
        fields = text.rsplit(")", 1)[1].split()
        return int(fields[38]), int(fields[16])  # fields 41 (policy) and 19 (nice)

    def me():
        with open(f"/proc/thread-self/stat") as f:
            return policy_of_stat(f.read())

    async def main():
        result = priority.apply(5, "rr")
        out = {"applied": result.applied, "note": result.note, "scheduler": result.scheduler,
               "loop": me(), "status": priority.live_status()}
        seen = []
        t = threading.Thread(target=lambda: seen.append(me()))
        t.start(); t.join()
        out["thread"] = seen[0]
        out["to_thread"] = await trio.to_thread.run_sync(me)
        done = await trio.run_process(["/bin/cat", "/proc/self/stat"], capture_stdout=True)
        out["trio_process"] = policy_of_stat(done.stdout.decode())
        out["popen"] = policy_of_stat(priority.popen(["/bin/cat", "/proc/self/stat"],
            stdout=subprocess.PIPE).communicate()[0].decode())
        out["bulk"] = await bulk.run_bulk(me)
        out["loop_rt_priority"] = os.sched_getparam(0).sched_priority

        def item():
            made = []
            t = threading.Thread(target=lambda: made.append(me()))
            t.start(); t.join()
            child = priority.popen(["/bin/cat", "/proc/self/stat"], stdout=subprocess.PIPE)
            made.append(policy_of_stat(child.communicate()[0].decode()))
            with priority.gil_free():
                made.append(me())
            made.append(me())
            return (threading.get_native_id(), os.sched_getparam(0).sched_priority, made)

        tid, out["bulk_rt_priority"], out["bulk_made"] = await bulk.run_bulk(item)
        # the worker leaves real time right after it handed the result over: wait for
        # that (with a deadline), then it must be ordinary
        def worker():
            with open(f"/proc/self/task/{tid}/stat") as f:
                return policy_of_stat(f.read())
        with trio.move_on_after(10):
            while worker()[0] != 0:
                await trio.sleep(0.001)
        out["bulk_thread_after"] = worker()
        out["released"] = await bulk.run_bulk(bulk.released(me))
        if sys.argv[1] == "guard":  # spins with short sleeps: the CPU-share guard demotes it
            import time
            from meshcloud.agent.loopguard import guard_realtime_loop
            from meshcloud.rtguard import GuardPolicy
            policy = GuardPolicy(window=1.0, period=0.1, cooldown=1.0)
            rr = lambda: os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard_realtime_loop, policy)
                deadline = time.monotonic() + 30  # a guard that never acts: fail, not spin
                while rr() and time.monotonic() < deadline:
                    busy = time.monotonic() + 0.02
                    while time.monotonic() < busy:
                        pass
                    await trio.sleep(0.001)
                out["after_spin"] = me()
                out["note_after_spin"] = priority.current().note
                with trio.move_on_after(30):
                    while not rr():
                        await trio.sleep(0.05)
                out["after_rest"] = me()
                out["note_after_rest"] = priority.current().note
                nursery.cancel_scope.cancel()
        if sys.argv[1] == "spin":  # a loop that never sleeps leaves real time
            import time
            deadline = time.monotonic() + 30  # a kernel that never warns: fail, not spin
            while (os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR
                   and time.monotonic() < deadline):
                pass
            out["after_spin"] = me()
            out["note_after"] = priority.current().note
        print(json.dumps(out))

    trio.run(main)
""")


def _rt_probe(mode: str, prefix: tuple[str, ...] = ()) -> dict:
    done = subprocess.run([*prefix, sys.executable, "-c", RT_PROBE, mode], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _may_realtime() -> bool:
    return LINUX and subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_RR, "
         "os.sched_param(1))"], capture_output=True).returncode == 0


SCHED_OTHER, SCHED_RR = 0, 2


@pytest.mark.skipif(not _may_realtime(), reason="needs Linux and the right to run real-time")
def test_a_real_time_loop_creates_only_ordinary_threads_and_processes():
    out = _rt_probe("plain")
    base = out["loop"][1]
    assert out["applied"] and out["scheduler"] == "rr", out["note"]
    assert out["loop"] == [SCHED_RR, base]
    assert out["status"]["scheduler"] == "rr" and out["status"]["raised"]
    for name in ("thread", "to_thread", "trio_process", "popen", "released",
                 "bulk_thread_after"):
        assert out[name] == [SCHED_OTHER, base], name
    # a bulk item's Python runs real-time one step below the loop, its GIL-free C calls
    # ordinary; what it starts is ordinary
    assert out["bulk"] == [SCHED_RR, base]
    assert out["loop_rt_priority"] > out["bulk_rt_priority"] >= 1
    thread, process, in_c_call, after_c_call = out["bulk_made"]
    assert thread == process == in_c_call == [SCHED_OTHER, base]
    assert after_c_call == [SCHED_RR, base]


@pytest.mark.skipif(not _may_realtime(), reason="needs Linux and the right to run real-time")
def test_a_real_time_loop_that_spins_with_short_sleeps_leaves_and_comes_back():
    out = _rt_probe("guard")
    assert out["after_spin"][0] == SCHED_OTHER
    assert "left real time: it used" in out["note_after_spin"]
    assert out["after_rest"][0] == SCHED_RR
    assert "real-time again" in out["note_after_rest"]


@pytest.mark.skipif(not _may_realtime(), reason="needs Linux and the right to run real-time")
def test_a_real_time_loop_that_never_sleeps_goes_back_to_the_fair_scheduler():
    out = _rt_probe("spin")  # returns only once the kernel's SIGXCPU demoted it
    assert out["after_spin"][0] == SCHED_OTHER
    assert "left real time" in out["note_after"]


@pytest.mark.skipif(not LINUX or shutil.which("setpriv") is None,
                    reason="needs Linux and setpriv (util-linux) to drop CAP_SYS_NICE")
def test_real_time_not_permitted_falls_back_and_says_why():
    out = _rt_probe("plain", prefix=("setpriv", "--bounding-set=-sys_nice"))
    assert not out["applied"] and out["loop"][0] == SCHED_OTHER
    assert "real time not permitted" in out["note"] and "RLIMIT_RTPRIO" in out["note"]
    assert "not raised: not permitted" in out["note"]  # the nice boost was tried next


def test_the_scheduler_setting():
    assert priority.scheduler_setting("fair", {}) == "fair"
    assert priority.scheduler_setting("fair", {priority.SCHED_ENV_VAR: "rr"}) == "rr"
    with pytest.raises(ConfigError, match=priority.SCHED_ENV_VAR):
        priority.scheduler_setting("fair", {priority.SCHED_ENV_VAR: "fifo"})
    with pytest.raises(ConfigError, match="loop_scheduler"):
        NodeConfig(loop_scheduler="fifo")


# --- every spawn in agent code goes through the helpers -------------------------------------

AGENT_PACKAGES = ("meshcloud", "apps", "vnet", "blobstore", "dht", "gossip")
SPAWNS = {("subprocess", "Popen"), ("subprocess", "run"), ("subprocess", "call"),
          ("subprocess", "check_call"), ("subprocess", "check_output"), ("os", "fork"),
          ("os", "forkpty"), ("os", "posix_spawn"), ("os", "posix_spawnp"), ("os", "system"),
          ("os", "popen"), ("pty", "fork"), ("os", "spawnv"), ("os", "spawnvp")}
NOT_IN_THE_AGENT = {
    "meshcloud/priority.py": "the helpers themselves",
    "meshcloud/demo.py": "`meshcloud demo`: the command line starts agents",
    "apps/workloads/cli.py": "command-line verbs",
    "vnet/pyplane/lab.py": "the plane's test lab",
    "apps/functions/zygote.py": "runs inside a function executor's own process",
    "gossip/sysinfo.py": "Termux:API commands; the agent samples through "
                         "priority.call_at_base (meshcloud/agent/members.py)",
}


def _spawn_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in SPAWNS):
            found.append(f"{node.func.value.id}.{node.func.attr} (line {node.lineno})")
    return found


def test_agent_code_starts_processes_only_through_the_helpers():
    bare = {}
    for package in AGENT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name not in NOT_IN_THE_AGENT and (calls := _spawn_calls(path)):
                bare[name] = calls
    assert not bare, ("start processes with meshcloud.priority.popen/run (a child inherits "
                      f"the raised priority of the event loop otherwise): {bare}")
    assert all((ROOT / name).exists() for name in NOT_IN_THE_AGENT)
