"""SWIM membership with Lifeguard, carrying each node's capacity.

The sans-IO core is :class:`gossip.core.SwimCore`; the trio driver is
:class:`gossip.driver.GossipDriver` (import it from ``gossip.driver``: this package's
``__init__`` stays free of trio so the simulator can use the core alone). A deterministic
many-node harness for tests, benches and the simulator is :mod:`sim.swimmesh`.
"""

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import GossipHooks, cert_hooks, fake_hooks
from gossip.member import MemberInfo, MemberState
from gossip.outputs import (
    LeaveSpread,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    Output,
    Refuted,
    Send,
    Sync,
)
from gossip.stats import GossipStatistics

__all__ = [
    "Capacity",
    "GossipConfig",
    "GossipHooks",
    "GossipStatistics",
    "LeaveSpread",
    "MemberEvent",
    "MemberFailed",
    "MemberInfo",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberState",
    "MemberSuspected",
    "MemberUpdated",
    "Output",
    "Refuted",
    "Send",
    "SwimCore",
    "Sync",
    "cert_hooks",
    "fake_hooks",
]
