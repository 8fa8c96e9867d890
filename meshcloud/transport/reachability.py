"""Can this node be dialled? A verdict from members' reports (sans-IO).

Members answer a probe (:class:`~meshcloud.transport.natmessages.ReachProbe`) with the
address our connection came from and which of our listen addresses they could dial back.
:class:`Reachability` keeps the latest report of each member (at most ``window``) and says:

* ``unknown`` until a report arrived;
* ``public`` when some member could dial one of our addresses;
* ``behind NAT`` when members answered and none could.

What peers then see of the node is its *mode* (:meth:`Reachability.mode`): a node behind
NAT with a relay reservation is ``relayed``; one with a connection that a hole punch made
direct shows ``direct after punch``. :meth:`punch_addresses` predicts where the node can
be reached from outside once it sends from its listen port: the observed host with the
listen port (NATs that keep the source port, as Linux MASQUERADE does when it can).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from meshcloud.errors import ConfigError
from meshcloud.transport.addresses import format_address, parse_address

UNKNOWN, PUBLIC, BEHIND_NAT = "unknown", "public", "behind NAT"
RELAYED, PUNCHED = "relayed", "direct after punch"


@dataclass(frozen=True, slots=True)
class Report:
    reporter: bytes
    observed: str
    dialable: tuple[str, ...]
    at: float


@dataclass(slots=True)
class Reachability:
    window: int = 5
    reports: OrderedDict[bytes, Report] = field(default_factory=OrderedDict)

    def on_report(self, reporter: bytes, observed: str, dialable: tuple[str, ...],
                  now: float) -> str:
        """Record a member's report; returns the verdict after it."""
        self.reports.pop(reporter, None)
        self.reports[reporter] = Report(reporter, observed, tuple(dialable), now)
        while len(self.reports) > self.window:
            self.reports.popitem(last=False)
        return self.verdict

    @property
    def verdict(self) -> str:
        if not self.reports:
            return UNKNOWN
        if any(r.dialable for r in self.reports.values()):
            return PUBLIC
        return BEHIND_NAT

    @property
    def observed_host(self) -> str | None:
        """The host members see us coming from most often (None if none said)."""
        hosts: Counter[str] = Counter()
        for report in self.reports.values():
            try:
                host, _ = parse_address(report.observed)
            except ConfigError:
                continue
            hosts[host] += 1
        return hosts.most_common(1)[0][0] if hosts else None

    def punch_addresses(self, listen: list[str]) -> list[str]:
        """Where peers may reach us during a punch: the observed host on our listen ports."""
        host = self.observed_host
        if host is None:
            return []
        out = []
        for address in listen:
            try:
                _, port = parse_address(address)
            except ConfigError:
                continue
            out.append(format_address(host, port))
        return list(dict.fromkeys(out))

    def mode(self, *, relays: int, punched: int) -> str:
        """What ``status`` shows: the verdict, refined by how this node is reached now."""
        verdict = self.verdict
        if verdict != BEHIND_NAT:
            return verdict
        if punched:
            return PUNCHED
        return RELAYED if relays else BEHIND_NAT
