"""Counters kept by SwimCore and the frozen snapshot it returns from ``statistics()``.

The core counts; it never logs or exports metrics (EXAMPLES.md: "a core reports an event,
the driver counts it"). ``dropped_*`` counters are messages refused without any effect:
``dropped_bad_signature``, ``dropped_implausible`` and ``dropped_non_member`` are hostile
by nature (forged incarnations, forged leaves, absurd incarnation jumps, non-members);
``dropped_no_proof`` is benign (an Alive about a node we do not know yet, relayed without
its certificate: a later sync brings it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Counters:
    broadcasts_sent: int = 0
    deaths_checked: int = 0
    deaths_declared: int = 0
    dropped_bad_signature: int = 0
    dropped_implausible: int = 0
    dropped_misaddressed: int = 0
    dropped_no_proof: int = 0
    dropped_non_member: int = 0
    dropped_stale_seq: int = 0
    ignored_unknown: int = 0
    indirect_probes: int = 0
    loop_stalls: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    probe_hints: int = 0
    probes_failed: int = 0
    probes_hastened: int = 0
    probes_retried: int = 0
    probes_stalled: int = 0
    probes_started: int = 0
    probes_unsettled: int = 0
    refutations: int = 0
    resumes: int = 0
    suspicions_postponed: int = 0
    suspicions_renewed: int = 0
    suspicions_started: int = 0
    syncs_received: int = 0
    syncs_started: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipStatistics:
    messages_sent: int
    messages_received: int
    broadcasts_sent: int
    """Piggybacked news items sent (one datagram may carry many)."""
    probes_started: int
    probes_failed: int
    probe_hints: int
    """Probes started early because the transport lost the connection to a peer (or a
    datagram to it came back unreachable)."""
    probes_hastened: int
    """Probe rounds that asked their relays at once, without waiting out the direct stage,
    because a datagram to the target came back unreachable (no ack could come)."""
    indirect_probes: int
    suspicions_started: int
    refutations: int
    deaths_declared: int
    """Suspicions that expired here (this node declared the member dead)."""
    deaths_checked: int
    """Deaths declared elsewhere of a member that had lately sent us something itself:
    checked here by a probe round of our own before we agree."""
    syncs_started: int
    syncs_received: int
    resumes: int
    loop_stalls: int
    """Stalls of our own event loop (lag over ``stall_threshold``) reported or seen."""
    probes_retried: int
    """Failed probe rounds run once more before accusing, because our own judgement was
    weak (a recent stall of our loop, or a health score above 0)."""
    probes_stalled: int
    """Probe steps extended because our loop stalled during them (not the peer's fault)."""
    probes_unsettled: int
    """Failed probe rounds that accused no one (start-up grace)."""
    suspicions_postponed: int
    """Suspicions that ran out during (or just after) a stall of ours, or during the
    start-up grace, and were given more time."""
    suspicions_renewed: int
    """Suspicions that ran out (or whose last check failed) after the suspect itself
    had sent us something since they began: it lives, so they started over."""
    """Times this node found its timers firing late (it was frozen) and started over."""
    dropped_bad_signature: int
    dropped_implausible: int
    """Suspect/Dead claiming an incarnation far above any the accused has signed."""
    dropped_non_member: int
    dropped_no_proof: int
    dropped_misaddressed: int
    dropped_stale_seq: int
    ignored_unknown: int
    health_score: int
    incarnation: int
    alive: int
    suspect: int
    dead: int
    left: int
    queued_broadcasts: int

    @property
    def hostile_dropped(self) -> int:
        """Messages refused as forged, implausible, or from/about non-members."""
        return self.dropped_bad_signature + self.dropped_implausible + self.dropped_non_member

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["hostile_dropped"] = self.hostile_dropped
        return out
