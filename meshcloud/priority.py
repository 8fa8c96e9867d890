"""Thread priorities: the agent's event loop above everything else, and nothing else with it.

Under load, an agent's slow loop steps are waits for a core, not work (docs/benchmarks.md,
"starvation"): an equal-priority thread waits its turn behind every busy process of the
machine, and a probe answered late is a node declared dead. The agent's start-up
(:mod:`meshcloud.agent.daemon`) therefore raises **its event-loop thread only**
:data:`LOOP_BOOST` nice steps above the process's *base* priority (the nice it was started
with), when it may: as root, with ``CAP_SYS_NICE``, or with an ``RLIMIT_NICE`` high enough.
Otherwise (a phone, an unprivileged user) nothing changes and :func:`raise_loop` says why.

On Linux a new thread, and a new process, inherits the nice value of the *thread* that
creates it, and the event-loop thread creates most of them (trio's worker threads, the
processes trio starts from those threads, the ones the loop starts itself). Nothing else
may run above the base, so it holds by construction:

* **threads**: once the loop is raised, every thread started through :mod:`threading`
  (trio's ``to_thread`` workers, thread pools, our own) moves itself back to the base
  priority before it runs anything (:func:`threading.setprofile`: a hook each new thread
  calls first, which removes itself). Raising one's own nice value needs no privilege.
* **processes**: trio starts them from a worker thread (at the base, by the rule above);
  code that starts one itself uses :func:`popen` or :func:`run`, which start it with the
  calling thread at the base priority for that moment (tests/meshcloud/test_priority.py
  refuses a bare ``subprocess.Popen``/``run`` or ``os.fork`` in agent code).
* **bulk work** (:mod:`meshcloud.bulk`) runs *below* the base for one item at a time
  (:func:`lowered`), then back at the base when the process may raise it again (always
  when the loop was raised), so the worker thread is not left low for the next job (a
  process trio starts from it, say). Unprivileged, a thread cannot come back up: it stays
  low, as it did before loop priorities existed.

A nice value only counts against the threads of the same scheduling group (the
session's autogroup, or a systemd service's CPU cgroup): it orders the loop ahead of the
agent's own worker threads, not ahead of other programs. :func:`realtime_loop`
(``loop_scheduler = "rr"``) puts the loop thread in the real-time class instead, ahead of
every ordinary thread of the machine, with ``SCHED_RESET_ON_FORK`` so that nothing it
creates is real-time, and ``RLIMIT_RTTIME`` so that a loop that stops sleeping goes back
to the fair scheduler (docs/architecture.md, "The node and the agent"; docs/benchmarks.md,
"loop priority"). It is opt-in (a real-time loop costs throughput: docs/benchmarks.md,
"loop priority, part 2"); next to it, bulk items run their
Python real-time one step below (:func:`python_work`, :func:`gil_free`: no priority
inversion through the GIL), and :mod:`meshcloud.rtguard` takes a loop that uses too
much CPU out of real time for a while (:func:`leave_realtime`, :func:`return_to_realtime`).

Linux only: elsewhere a nice value belongs to the whole process, and nothing is changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from meshcloud.errors import ConfigError

log = logging.getLogger(__name__)

LOOP_BOOST = 5
"""Nice steps the event-loop thread runs above the process's base priority (0: off)."""

SCHED_ENV_VAR = "MESHCLOUD_LOOP_SCHEDULER"
"""Overrides the ``loop_scheduler`` setting (``fair``: a nice boost; ``rr``: real time)."""

SCHEDULERS = ("fair", "rr")

ENV_VAR = "MESHCLOUD_LOOP_PRIORITY"
"""Overrides the ``loop_priority`` setting (``0`` turns every raise off)."""

T = TypeVar("T")
Get = Callable[[int, int], int]
Set = Callable[[int, int, int], None]


@dataclass(frozen=True)
class LoopPriority:
    """What :func:`raise_loop` did: the base nice, the loop thread's nice, and why."""

    base: int
    loop: int
    applied: bool
    note: str
    loop_tid: int = 0
    scheduler: str = "fair"

    def status(self) -> dict[str, Any]:
        """The figures ``/v1/status`` shows next to the loop lag."""
        return {"nice": self.loop, "base_nice": self.base, "raised": self.applied,
                "scheduler": self.scheduler, "priority_note": self.note}


_state: LoopPriority | None = None
"""This process's loop priority (a property of its threads, so one per process)."""

_out_for_good = False
"""The kernel's RLIMIT_RTTIME demoted the loop: no :func:`return_to_realtime`."""


def current() -> LoopPriority | None:
    return _state


def boost_setting(configured: int, environ: Mapping[str, str]) -> int:
    """The boost to apply: ``MESHCLOUD_LOOP_PRIORITY`` if set, else the config's value."""
    text = environ.get(ENV_VAR)
    if text is None or not text.strip():
        return check_boost(configured, "loop_priority")
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{ENV_VAR}: {text!r} is not a whole number from 0 to 20") from None
    return check_boost(value, ENV_VAR)


def scheduler_setting(configured: str, environ: Mapping[str, str]) -> str:
    """The loop's scheduler: ``MESHCLOUD_LOOP_SCHEDULER`` if set, else the config's."""
    value = environ.get(SCHED_ENV_VAR, "").strip() or configured
    if value not in SCHEDULERS:
        name = SCHED_ENV_VAR if environ.get(SCHED_ENV_VAR, "").strip() else "loop_scheduler"
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(SCHEDULERS)}")
    return value


def apply(boost: int, scheduler: str) -> LoopPriority:
    """The agent's start-up: the calling thread (the event loop) real-time if asked and
    permitted, else ``boost`` nice steps above the base if permitted (0: neither)."""
    if scheduler == "rr" and boost:
        realtime = realtime_loop()
        if realtime.applied:
            return realtime
        fair = raise_loop(boost)
        return fair_with_note(fair, realtime.note)
    return raise_loop(boost)


def fair_with_note(fair: LoopPriority, before: str) -> LoopPriority:
    global _state
    _state = LoopPriority(fair.base, fair.loop, fair.applied, f"{before}; {fair.note}",
                          fair.loop_tid)
    return _state


def check_boost(value: int, name: str) -> int:
    if not 0 <= value <= 20:
        raise ConfigError(f"{name}: {value} is not a whole number from 0 to 20")
    return value


def raise_loop(boost: int, *, get: Get = os.getpriority, set_: Set = os.setpriority,
               platform: str = sys.platform) -> LoopPriority:
    """Raise the calling thread (the event loop) ``boost`` nice steps above the base, if
    permitted; install the reset of new threads first. Records and returns what it did."""
    global _state
    tid = threading.get_native_id()
    base = get(os.PRIO_PROCESS, tid) if platform.startswith("linux") else 0
    if not platform.startswith("linux"):
        result = LoopPriority(base, base, False, "not raised: per-thread priority is Linux only")
    elif boost == 0:
        result = LoopPriority(base, base, False, "not raised: loop_priority is 0")
    else:
        target = max(-20, base - boost)
        _state = LoopPriority(base, target, True, "", tid)  # the hook reads it
        install_thread_reset()
        try:
            set_(os.PRIO_PROCESS, tid, target)
        except OSError as exc:
            uninstall_thread_reset()
            result = LoopPriority(base, base, False, (
                f"not raised: not permitted ({exc.strerror or exc}); nice {target} needs "
                f"root, CAP_SYS_NICE or RLIMIT_NICE >= {20 - target}"), tid)
        else:
            result = LoopPriority(base, target, True,
                                  f"event loop at nice {target}, other threads at {base}", tid)
    _state = result
    return result


RT_PRIORITY = 2
"""The event loop's real-time priority with ``loop_scheduler = "rr"`` (above every
ordinary thread and above :data:`HOLDER_RT_PRIORITY`, below the kernel's own real-time
threads)."""

HOLDER_RT_PRIORITY = 1
"""A worker thread's real-time priority while it runs Python in a bulk item
(:func:`python_work`): below every real-time loop, above every ordinary thread."""

RT_CPU_LIMIT_US = 1_000_000
"""CPU time (µs) the real-time loop may run without sleeping before the kernel warns it
(``RLIMIT_RTTIME``, SIGXCPU): it then leaves real time for good (:func:`_leave_realtime`)."""


def realtime_loop(*, platform: str = sys.platform) -> LoopPriority:
    """Make the calling thread (the event loop) ``SCHED_RR`` at :data:`RT_PRIORITY`, with
    ``SCHED_RESET_ON_FORK`` (a thread or process it creates starts as an ordinary one),
    if permitted; a loop that runs :data:`RT_CPU_LIMIT_US` of CPU without sleeping goes
    back to the ordinary scheduler (and RT throttling caps it meanwhile)."""
    global _state
    tid = threading.get_native_id()
    if not platform.startswith("linux"):
        _state = LoopPriority(0, 0, False, "not raised: per-thread priority is Linux only")
        return _state
    base = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        signal.signal(signal.SIGXCPU, _leave_realtime)
        _soft, hard = resource.getrlimit(resource.RLIMIT_RTTIME)
        limit = RT_CPU_LIMIT_US if hard == resource.RLIM_INFINITY else min(hard, RT_CPU_LIMIT_US)
        resource.setrlimit(resource.RLIMIT_RTTIME, (limit, hard))
        os.sched_setscheduler(tid, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                              os.sched_param(RT_PRIORITY))
    except (OSError, ValueError) as exc:
        _state = LoopPriority(base, base, False, (
            f"not raised: real time not permitted ({getattr(exc, 'strerror', None) or exc}); "
            "it needs root, CAP_SYS_NICE or RLIMIT_RTPRIO >= 1"), tid)
        return _state
    _state = LoopPriority(base, base, True, (
        f"event loop real-time (SCHED_RR {RT_PRIORITY}, reset on fork), other threads at "
        f"nice {base}"), tid, "rr")
    return _state


def realtime_now() -> bool:
    """Whether the event loop runs real-time at this moment (then bulk items'
    Python runs real-time too: :func:`python_work`)."""
    state = _state
    return state is not None and state.applied and state.scheduler == "rr"


def out_for_good() -> bool:
    """The kernel's RLIMIT_RTTIME demoted the loop: it does not come back."""
    return _out_for_good


def leave_realtime(why: str) -> None:
    """The loop thread (the caller) back to the ordinary scheduler, for ``why``; bulk
    items that start from now on stay ordinary (:func:`python_work`)."""
    global _state
    state = _state
    with contextlib.suppress(OSError):
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_OTHER, os.sched_param(0))
    if state is not None and state.scheduler == "rr":
        _state = LoopPriority(state.base, state.base, False, f"event loop left real time: {why}",
                              state.loop_tid)
        log.warning(_state.note)


def return_to_realtime() -> bool:
    """The loop thread (the caller) real-time again after :func:`leave_realtime`."""
    global _state
    state = _state
    if (state is None or state.applied or _out_for_good
            or state.loop_tid != threading.get_native_id()):
        return False
    try:
        os.sched_setscheduler(state.loop_tid, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                              os.sched_param(RT_PRIORITY))
    except OSError:
        return False
    _state = LoopPriority(state.base, state.base, True, (
        f"event loop real-time again (SCHED_RR {RT_PRIORITY}): its CPU share fell"),
        state.loop_tid, "rr")
    log.info(_state.note)
    return True


# --- bulk items next to a real-time loop: no priority inversion through the GIL -------------

class _Holder(threading.local):
    realtime = False
    """This thread is in :func:`python_work` at :data:`HOLDER_RT_PRIORITY`."""


_holder = _Holder()


def _set_policy(policy: int, prio: int) -> bool:
    try:
        os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, os.sched_param(prio))
    except (OSError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def python_work() -> Iterator[bool]:
    """A worker thread's bulk item next to a real-time loop (yields True if so):
    :func:`begin_python_work` for the body, :func:`end_python_work` after."""
    try:
        yield begin_python_work()
    finally:
        end_python_work()


def begin_python_work() -> bool:
    """The calling worker thread real-time at :data:`HOLDER_RT_PRIORITY` while the loop
    is real-time (True if so), until :func:`end_python_work`.

    The event loop waits for the GIL whenever another thread of the process holds it,
    and an ordinary thread that holds it when the kernel preempts it (on a busy machine,
    or for the real-time loop itself) keeps the loop waiting until it runs again: tens
    to hundreds of ms (docs/benchmarks.md, "loop priority, part 2"). So while the loop is
    real-time, a bulk item runs real-time too, one priority below every loop: a preempted
    holder runs again as soon as the loop waits for it. The long C calls of the item that
    release the GIL (hashing, sealing, erasure coding) run ordinary inside
    :func:`gil_free`, so the real-time share is the item's Python and copies only."""
    if _holder.realtime:
        return True
    if not realtime_now() or not _set_policy(os.SCHED_RR, HOLDER_RT_PRIORITY):
        return False
    _holder.realtime = True
    return True


def end_python_work() -> None:
    """The calling worker thread back to the ordinary scheduler (if :func:`begin_python_work`
    raised it)."""
    if _holder.realtime:
        _holder.realtime = False
        _set_policy(os.SCHED_OTHER, 0)


@contextlib.contextmanager
def gil_free() -> Iterator[None]:
    """The body is one C call that releases the GIL (hashing, sealing, coding): inside
    :func:`python_work` it runs at the ordinary priority, then real-time again."""
    if not _holder.realtime:
        yield
        return
    _set_policy(os.SCHED_OTHER, 0)
    try:
        yield
    finally:
        if realtime_now():
            _set_policy(os.SCHED_RR, HOLDER_RT_PRIORITY)
        else:
            _holder.realtime = False  # the loop left real time: the item stays ordinary


def _leave_realtime(signum: int, frame: FrameType | None) -> None:
    """SIGXCPU: the real-time loop ran too long without sleeping: ordinary from now on."""
    global _out_for_good
    _out_for_good = True  # the guard never brings it back
    leave_realtime(f"it ran {RT_CPU_LIMIT_US // 1000} ms of CPU without sleeping")


def live_status() -> dict[str, Any]:
    """For ``/v1/status`` (called on the loop thread): its nice value and scheduler now,
    the base, and what start-up did."""
    state = _state
    out: dict[str, Any] = state.status() if state is not None else {
        "raised": False, "priority_note": "not set by this process's start-up"}
    with contextlib.suppress(OSError, AttributeError):
        out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
        out["scheduler"] = "rr" if policy == os.SCHED_RR else "fair"
    return out


def forget() -> None:
    """Back to no recorded loop priority (tests; the threads keep their nice values)."""
    global _state, _out_for_good
    uninstall_thread_reset()
    _state = None
    _out_for_good = False


def base_nice() -> int:
    """The nice every thread but the raised event loop runs at."""
    if _state is not None:
        return _state.base
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's
    except OSError:
        return 0


# --- new threads: back to the base before they run anything --------------------------------

_previous_hook: Any = None


def _reset_hook(frame: FrameType, event: str, arg: object) -> None:
    sys.setprofile(_previous_hook)
    to_base()


def install_thread_reset() -> None:
    global _previous_hook
    if threading.getprofile() is not _reset_hook:
        _previous_hook = threading.getprofile()
        threading.setprofile(_reset_hook)


def uninstall_thread_reset() -> None:
    if threading.getprofile() is _reset_hook:
        threading.setprofile(_previous_hook)


def to_base() -> None:
    """Move the calling thread to the base priority if it runs above it (always allowed)."""
    state = _state
    if state is None or not state.applied:
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, tid) < state.base:
            os.setpriority(os.PRIO_PROCESS, tid, state.base)


# --- starting processes, and bulk work ---------------------------------------------------


@contextlib.contextmanager
def at_base() -> Iterator[None]:
    """The body runs with the calling thread at the base priority (put back after): what
    it creates (a process, a thread) inherits the base. Unprivileged, a thread below the
    base cannot come up: the body then runs at that thread's priority."""
    tid = threading.get_native_id()
    base = base_nice()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        if before != base:
            os.setpriority(os.PRIO_PROCESS, tid, base)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        if before != base:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, before)


def popen(args: Any, **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **options)`` whose process starts at the base priority,
    whichever thread calls it (the agent's own way to start a process outside trio)."""
    with at_base():
        return subprocess.Popen(args, **options)


def run(args: Any, **options: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(args, **options)`` whose process starts at the base priority."""
    with at_base():
        return subprocess.run(args, **options)


def call_at_base(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with the calling thread at the base priority (code outside
    the agent's packages that may start a process, e.g. a Termux:API command)."""
    with at_base():
        return fn(*args, **kwargs)


@contextlib.contextmanager
def lowered(steps: int) -> Iterator[bool]:
    """The body runs with the calling thread ``steps`` nice steps below the base (yields
    True if it does); after, the thread goes back to the base if permitted. Not when the
    loop is real-time: it runs ahead of every ordinary thread anyway, and a low thread
    that holds the GIL when the kernel preempts it keeps the loop waiting all the longer."""
    state = _state
    if state is not None and state.applied and state.scheduler == "rr":
        yield False
        return
    tid = threading.get_native_id()
    base = base_nice()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, base + steps))
        done = True
    except (AttributeError, OSError):
        done = False
    try:
        yield done
    finally:
        state = _state
        if done and state is not None and state.applied:  # only then may it come back up
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, base)
