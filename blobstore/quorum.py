"""QuorumCall: ask several replicas, decide when enough have answered.

Used for the object index (replication 3, read and write quorum 2) and anywhere a request
fans out to replicas. The core only counts; the driver sends the requests, feeds replies,
failures and the timer, and acts on the outputs:

* :class:`QuorumSucceeded` once ``need`` targets replied (emitted once);
* :class:`QuorumFailed` once success became impossible (too many failures) or the deadline
  passed with fewer than ``need`` replies (emitted once);
* after the call is decided and every target has answered or the deadline passed,
  :meth:`QuorumCall.read_repair` says which targets returned an older value (or none) and
  should be sent the newest one (Dynamo's read repair, DeCandia et al. 2007, §4.6).

Invariants: a target counts once (its first answer wins; later ones are ignored); the
decision never changes once made; replies after the decision still feed read repair.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from meshcloud.errors import LocalProtocolError

V = TypeVar("V")
Target = Hashable


class QuorumState(enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QuorumSucceeded(Generic[V]):
    replies: dict[Any, V]


@dataclass(frozen=True, slots=True)
class QuorumFailed:
    reason: str
    replied: tuple[Any, ...]
    failures: dict[Any, str]


@dataclass(frozen=True, slots=True)
class ReadRepair(Generic[V]):
    """Send ``value`` to ``targets``: they answered with an older value or none."""

    value: V
    targets: tuple[Any, ...]


QuorumOutput = QuorumSucceeded[Any] | QuorumFailed


@dataclass
class QuorumCall(Generic[V]):
    """One fan-out to ``targets`` needing ``need`` replies, optionally by ``deadline``."""

    targets: Sequence[Target]
    need: int
    deadline: float | None = None
    replies: dict[Any, V] = field(default_factory=dict)
    failures: dict[Any, str] = field(default_factory=dict)
    state: QuorumState = QuorumState.PENDING
    timed_out: bool = False

    def __post_init__(self) -> None:
        self.targets = tuple(dict.fromkeys(self.targets))
        if not 1 <= self.need <= len(self.targets):
            raise LocalProtocolError(
                f"quorum of {self.need} impossible with {len(self.targets)} targets"
            )

    @property
    def pending(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t not in self.replies and t not in self.failures)

    @property
    def complete(self) -> bool:
        """Every target answered, or the deadline passed: nothing more will be counted."""
        return self.timed_out or not self.pending

    def on_reply(self, target: Target, value: V, now: float) -> list[QuorumOutput]:
        if not self._accepts(target):
            return []
        self.replies[target] = value
        return self._decide()

    def on_failure(self, target: Target, reason: str, now: float) -> list[QuorumOutput]:
        if not self._accepts(target):
            return []
        self.failures[target] = reason
        return self._decide()

    def on_timer(self, now: float) -> list[QuorumOutput]:
        if self.deadline is None or now < self.deadline or self.timed_out:
            return []
        self.timed_out = True
        return self._decide()

    def next_deadline(self) -> float | None:
        return None if self.complete else self.deadline

    def _accepts(self, target: Target) -> bool:
        if target not in self.targets:
            return False
        if self.timed_out:
            return False
        return target not in self.replies and target not in self.failures

    def _decide(self) -> list[QuorumOutput]:
        if self.state is not QuorumState.PENDING:
            return []
        if len(self.replies) >= self.need:
            self.state = QuorumState.SUCCEEDED
            return [QuorumSucceeded(dict(self.replies))]
        reachable = len(self.replies) + (0 if self.timed_out else len(self.pending))
        if reachable < self.need:
            self.state = QuorumState.FAILED
            reason = "deadline passed" if self.timed_out else "too many failures"
            return [QuorumFailed(
                f"{reason}: {len(self.replies)} of {self.need} needed replies",
                tuple(self.replies), dict(self.failures),
            )]
        return []

    def read_repair(self, version: Callable[[V], Any]) -> ReadRepair[V] | None:
        """After completion: the newest reply and the repliers that lack it.

        ``version`` orders values (an HLC timestamp, say); a reply of ``None`` means the
        target has no value and always needs repair if anyone has one.
        """
        if not self.complete:
            return None
        present = [(t, v) for t, v in self.replies.items() if v is not None]
        if not present:
            return None
        newest = max(present, key=lambda tv: version(tv[1]))[1]
        top = version(newest)
        stale = tuple(
            t for t, v in self.replies.items() if v is None or version(v) < top
        )
        return ReadRepair(newest, stale) if stale else None
