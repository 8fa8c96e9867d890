"""The driver of the real-time loop's CPU-share guard (:mod:`meshcloud.rtguard`).

Runs on the event-loop thread, so :func:`time.thread_time` is the loop's own CPU time:
every :attr:`GuardPolicy.period` seconds it feeds the guard and applies its verdict
(:func:`meshcloud.priority.leave_realtime`, :func:`meshcloud.priority.return_to_realtime`).
Returns at once when the loop is not real-time at start-up, and for good once the
kernel's ``RLIMIT_RTTIME`` has demoted it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from meshcloud import priority
from meshcloud.rtguard import CpuShareGuard, GuardPolicy, Verdict


async def guard_realtime_loop(policy: GuardPolicy = GuardPolicy(), *,
                              cpu: Callable[[], float] = time.thread_time) -> None:
    if not priority.realtime_now():
        return
    guard = CpuShareGuard(policy)
    while True:
        await trio.sleep(policy.period)
        verdict = guard.observe(trio.current_time(), cpu())
        if verdict is Verdict.LEAVE and priority.realtime_now():
            share = guard.share() or 0.0
            priority.leave_realtime(
                f"it used {share:.0%} of a core over {policy.window:.0f} s (more than "
                f"{policy.max_share:.0%}); back after {policy.cooldown:.0f} s below "
                f"{policy.resume_share:.0%}")
        elif verdict is Verdict.RETURN and not priority.return_to_realtime():
            return  # demoted for good (RLIMIT_RTTIME), or no longer permitted
        if guard.realtime and not priority.realtime_now() and priority.out_for_good():
            return
