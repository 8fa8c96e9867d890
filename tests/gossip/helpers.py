"""Helpers for driving SwimCores by hand: build cores, move messages, jump in time."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import GossipHooks, fake_hooks
from gossip.messages import Compound
from gossip.outputs import Output, Send, Sync
from sim.swimmesh import sim_node_id

CONFIG = GossipConfig()


def make_core(index: int, *, now: float = 0.0, config: GossipConfig = CONFIG,
              hooks: GossipHooks | None = None, incarnation: int = 0,
              node_id: bytes | None = None) -> SwimCore:
    node_id = node_id or sim_node_id(index)
    return SwimCore(node_id, config, hooks or fake_hooks(node_id), random.Random(index),
                    now=now, addresses=(f"sim://{index}",), incarnation=incarnation)


def parts(msg: object) -> list[object]:
    return list(msg.parts) if type(msg) is Compound else [msg]  # type: ignore[attr-defined]


def sent(outputs: Iterable[Output], kind: type | None = None,
         to: bytes | None = None) -> list[object]:
    """Every message of ``kind`` (all if None) in the Sends of ``outputs`` (to ``to``)."""
    found = []
    for out in outputs:
        if type(out) is Send and (to is None or out.to == to):
            found.extend(p for p in parts(out.msg) if kind is None or type(p) is kind)
    return found


def events(outputs: Iterable[Output], kind: type) -> list[object]:
    return [out for out in outputs if type(out) is kind]


class Wire:
    """Cores wired together: outputs are delivered at once, in order, unless dropped."""

    def __init__(self, cores: Iterable[SwimCore]) -> None:
        self.cores = {core.node_id: core for core in cores}
        self.now = 0.0
        self.drop: Callable[[bytes, bytes, object], bool] = lambda src, dst, msg: False
        self.log: list[tuple[bytes, Output]] = []

    def run(self, source: bytes, outputs: list[Output], *, max_steps: int = 10_000) -> None:
        """Deliver ``outputs`` of ``source`` and everything they cause."""
        pending = [(source, out) for out in outputs]
        steps = 0
        while pending:
            steps += 1
            assert steps < max_steps, "message storm"
            src, out = pending.pop(0)
            self.log.append((src, out))
            if type(out) is Send:
                target = self.cores.get(out.to)
                if target is None or self.drop(src, out.to, out.msg):
                    continue
                pending.extend((out.to, o) for o in target.on_message(src, out.msg, self.now))
            elif type(out) is Sync:
                target = self.cores.get(out.to)
                if target is None or self.drop(src, out.to, out.msg):
                    pending.extend((src, o) for o in
                                   self.cores[src].on_push_pull_failed(out.to, self.now))
                    continue
                reply, outs = target.on_push_pull(src, out.msg, self.now)
                pending.extend((out.to, o) for o in outs)
                pending.extend((src, o) for o in
                               self.cores[src].on_push_pull_reply(out.to, reply, self.now))

    def advance(self, until: float) -> None:
        """Move time to ``until``, firing every core's timers on the way."""
        while True:
            due = [(c.next_deadline(), i) for i, c in self.cores.items()]
            due = [(d, i) for d, i in due if d is not None and d <= until]
            if not due:
                break
            when, node = min(due)
            self.now = max(self.now, when)
            self.run(node, self.cores[node].on_timer(self.now))
        self.now = until

    def outputs_of(self, node: bytes) -> list[Output]:
        return [out for src, out in self.log if src == node]

    def all_outputs(self) -> list[Output]:
        return [out for _, out in self.log]
