"""Hypothesis stateful tests: SwimCores under drops, delays, crashes, restarts, leaves.

A small mesh runs in the deterministic harness while hypothesis picks the faults. After
every step the SWIM invariants must hold:

* a node never declares itself dead (no Dead about itself from itself without being a
  leave, no MemberFailed about itself, its own state ALIVE or LEFT);
* incarnations never go backwards (a node's own, and every entry of every table while it
  stays in the table);
* a refuted suspicion never ends in death (no MemberFailed at an incarnation below one
  that was refuted before, on the same observer);
* forgeries (unsigned Alives claiming a new incarnation, unsigned leaves, statements
  about ourselves we never made) are dropped and counted, never applied;
* once the faults stop (no loss, no crash for a while), the survivors converge.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.member import MemberState
from gossip.messages import Compound, Dead
from gossip.outputs import MemberFailed, MemberUpdated, Send
from sim.swimmesh import SwimCluster

N = 5
FORGED = 10**12
"""An incarnation no honest node reaches in a test: only a forgery could carry it."""


class SwimMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16), warm=st.booleans())
    def start(self, seed: int, warm: bool) -> None:
        self.cluster = SwimCluster(config=GossipConfig(), seed=seed, latency=0.005,
                                   jitter=0.01, record=False)
        self.violations: list[str] = []
        self.refuted: dict[tuple[bytes, int, bytes], int] = {}
        self.seen_inc: dict[tuple[bytes, int, bytes], int] = {}
        self.own_inc: dict[tuple[bytes, int], int] = {}
        self.cluster.listeners.append(self._watch)
        if warm:
            self.ids = self.cluster.populate(N)
        else:
            first = self.cluster.add()
            self.ids = [first] + [self.cluster.add(seeds=[first]) for _ in range(N - 1)]
            self.cluster.run_for(3.0)  # let the joins land before any fault
        self.left: set[bytes] = set()

    # --- watching every output ------------------------------------------------------------

    def _watch(self, now: float, source: bytes, out: object) -> None:
        node = self.cluster.nodes[source]
        key = (source, node.generation)
        if type(out) is Send:
            msg = out.msg
            for part in (msg.parts if type(msg) is Compound else (msg,)):
                if type(part) is Dead and part.node == source and not part.is_leave:
                    self.violations.append("a node declared itself dead")
            return
        member = getattr(out, "member", None)
        if member is None:
            return
        subject = member.node_id
        if type(out) is MemberFailed:
            if subject == source:
                self.violations.append("MemberFailed about itself")
            if member.incarnation < self.refuted.get((*key, subject), -1):
                self.violations.append("a refuted suspicion ended in death")
        if type(out) is MemberUpdated and out.refuted:
            self.refuted[(*key, subject)] = max(self.refuted.get((*key, subject), -1),
                                                member.incarnation)

    # --- faults ---------------------------------------------------------------------------

    def live(self) -> list[bytes]:
        return [i for i in self.ids if self.cluster.nodes[i].up and i not in self.left]

    @rule(seconds=st.floats(0.05, 6.0))
    def run(self, seconds: float) -> None:
        self.cluster.run_for(seconds)

    @rule(loss=st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
    def set_loss(self, loss: float) -> None:
        self.cluster.loss = loss

    @rule(latency=st.sampled_from([0.001, 0.05, 0.3, 0.9]))
    def set_delay(self, latency: float) -> None:
        self.cluster.latency = latency
        self.cluster.jitter = latency

    @precondition(lambda self: len(self.live()) > 2)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self.live()))
        self.cluster.crash(victim, hint=data.draw(st.booleans()))

    @precondition(lambda self: any(not self.cluster.nodes[i].up for i in self.ids))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        down = [i for i in self.ids if not self.cluster.nodes[i].up]
        node = data.draw(st.sampled_from(down))
        self.cluster.restart(node, self.live())

    @precondition(lambda self: len(self.live()) > 2)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.left.add(node)
        self.cluster.leave(node)

    @rule(data=st.data(), cores=st.integers(1, 64))
    def update_capacity(self, data: st.DataObject, cores: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.cluster._run_outputs(
            self.cluster.nodes[node],
            self.cluster.nodes[node].core.update_capacity(Capacity(cpu_cores=cores),
                                                          self.cluster.now))
        self.cluster._arm(self.cluster.nodes[node])

    @rule(data=st.data(), kind=st.sampled_from(["alive", "leave", "self"]))
    def forge(self, data: st.DataObject, kind: str) -> None:
        """A member sends a forgery; it must be dropped and counted, never applied."""
        live = self.live()
        liar = data.draw(st.sampled_from(live))
        target = data.draw(st.sampled_from([i for i in live if i != liar]))
        subject = data.draw(st.sampled_from(self.ids))
        if kind == "self":
            subject = target
        core = self.cluster.nodes[target].core
        known = core.table.get(subject)
        before = core.statistics().dropped_bad_signature
        if kind == "leave":
            if known is None or known.state.gone:
                return
            msg: object = Dead(node=subject, incarnation=known.incarnation, from_node=subject,
                               signature=b"forged")
        else:
            if known is None:
                return
            msg = dataclasses.replace(known.alive, incarnation=FORGED, signature=b"forged")
        self.cluster._run_outputs(self.cluster.nodes[target],
                                  core.on_message(liar, msg, self.cluster.now))
        self.cluster._arm(self.cluster.nodes[target])
        assert core.statistics().dropped_bad_signature == before + 1
        self.forged = True

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def forgeries_are_never_applied(self) -> None:
        for node in self.cluster.live_nodes():
            assert node.core.incarnation < FORGED
            for subject, member in node.core.table.members.items():
                assert member.incarnation < FORGED
                if member.state is MemberState.LEFT and subject != node.node_id:
                    assert subject in self.left or not self.cluster.nodes[subject].up or (
                        self.cluster.nodes[subject].core.left), "a forged leave was applied"

    @invariant()
    def no_violation_seen(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def own_state_is_alive_or_left(self) -> None:
        for node in self.cluster.live_nodes():
            state = node.core.state_of(node.node_id)
            assert state in (MemberState.ALIVE, MemberState.LEFT), state
            if state is MemberState.LEFT:
                assert node.core.left

    @invariant()
    def incarnations_never_go_backwards(self) -> None:
        for node in self.cluster.live_nodes():
            key = (node.node_id, node.generation)
            inc = node.core.incarnation
            assert inc >= self.own_inc.get(key, 0)
            self.own_inc[key] = inc
            for subject, member in node.core.table.members.items():
                entry = (*key, subject)
                assert member.incarnation >= self.seen_inc.get(entry, 0)
                self.seen_inc[entry] = member.incarnation
            for entry in [e for e in self.seen_inc
                          if e[:2] == key and e[2] not in node.core.table.members]:
                del self.seen_inc[entry]  # reaped: a later return starts afresh

    def teardown(self) -> None:
        if not hasattr(self, "cluster"):
            return
        cluster = self.cluster
        cluster.loss = 0.0
        cluster.latency, cluster.jitter = 0.005, 0.01
        for node in list(self.left):  # a node that left comes back as a fresh process
            if cluster.nodes[node].up:
                cluster.crash(node)
            cluster.restart(node, [i for i in self.live() if i != node])
            self.left.discard(node)
        cluster.run_for(240.0)
        assert not self.violations, self.violations
        assert cluster.converged(), "survivors did not converge once the faults stopped"


SwimMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestSwimStateful = SwimMachine.TestCase
