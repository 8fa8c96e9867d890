"""The iptables rules that isolate V-Nets, in chains the agent owns.

Two chains, ``MC-VNET-IN`` (jumped to from ``INPUT``) and ``MC-VNET-FWD`` (from
``FORWARD``), hold per V-Net rules tagged with a comment ``mc-vnet:<name>``:

* ``FWD -i IF -o mvXXXXXX+ -s CIDR -d CIDR -j ACCEPT`` (and back, and between two
  replicas): the V-Net's own traffic between its tunnel and the veths of its replicas on
  this host (``mvXXXXXX`` is the V-Net's replica prefix, :func:`vnet.ipam.replica_links`);
* ``FWD -i IF -j DROP`` and ``FWD -o IF -j DROP`` (and the same for its replica veths):
  nothing else is forwarded into or out of a V-Net, so a V-Net never reaches another
  V-Net nor the host's other interfaces through this host;
* ``IN -i IF ! -s CIDR -j DROP`` and ``IN -i IF ! -d CIDR -j DROP`` (and the same for
  its replica veths): what arrives on a V-Net's interface is for this host's address
  *in that V-Net* only (Linux would otherwise deliver a packet for any local address,
  e.g. the host's address in another V-Net or on the underlay).

:meth:`Firewall.remove` deletes a V-Net's rules; when no V-Net is left it removes the
jumps and the chains too, so ``iptables-save`` is as before.
"""

from __future__ import annotations

import ipaddress

import trio

from vnet.ipam import replica_links
from vnet.plane import PlaneError

IN_CHAIN = "MC-VNET-IN"
FWD_CHAIN = "MC-VNET-FWD"
HOOKS = ((IN_CHAIN, "INPUT"), (FWD_CHAIN, "FORWARD"))


async def run(*cmd: str, check: bool = True, stdin: bytes | None = None) -> str:
    """Run one command; its stdout, or :class:`PlaneError` with its stderr."""
    try:
        result = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True,
                                        check=False, stdin=stdin or b"")
    except FileNotFoundError:
        raise PlaneError(f"`{cmd[0]}` is not installed") from None
    if check and result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise PlaneError(f"{' '.join(cmd[:4])}…: {err or 'exit ' + str(result.returncode)}")
    return result.stdout.decode(errors="replace")


def rules_for(vnet: str, interface: str, network: ipaddress.IPv4Network
              ) -> list[tuple[str, ...]]:
    """The V-Net's rules, in order: its accepts (between its tunnel interface and its
    replicas' veths, V-Net addresses only), then its drops."""
    tag = ("-m", "comment", "--comment", f"mc-vnet:{vnet}")
    cidr = str(network)
    links = replica_links(vnet) + "+"
    inside = ("-s", cidr, "-d", cidr)
    rules: list[tuple[str, ...]] = [
        (FWD_CHAIN, "-i", interface, "-o", links, *inside, *tag, "-j", "ACCEPT"),
        (FWD_CHAIN, "-i", links, "-o", interface, *inside, *tag, "-j", "ACCEPT"),
        (FWD_CHAIN, "-i", links, "-o", links, *inside, *tag, "-j", "ACCEPT")]
    for device in (interface, links):
        rules += [(FWD_CHAIN, "-i", device, *tag, "-j", "DROP"),
                  (FWD_CHAIN, "-o", device, *tag, "-j", "DROP"),
                  (IN_CHAIN, "-i", device, "!", "-s", cidr, *tag, "-j", "DROP"),
                  (IN_CHAIN, "-i", device, "!", "-d", cidr, *tag, "-j", "DROP")]
    return rules


class Firewall:
    """The agent's V-Net rules on this host (one per agent, shared by its planes)."""

    def __init__(self, iptables: str = "iptables") -> None:
        self.iptables = iptables
        self.lock = trio.Lock()
        self.installed: dict[str, list[tuple[str, ...]]] = {}
        self.used = False
        """True once a rule was installed by this run (stopping then cleans the chains)."""

    async def _ipt(self, *args: str, check: bool = True) -> str:
        return await run(self.iptables, "-w", *args, check=check)

    async def _exists(self, *rule: str, flag: str = "-C") -> bool:
        try:
            result = await trio.run_process([self.iptables, "-w", flag, *rule], check=False,
                                            capture_stdout=True, capture_stderr=True)
        except FileNotFoundError:
            raise PlaneError(f"`{self.iptables}` is not installed") from None
        return result.returncode == 0

    async def _ensure_chains(self) -> None:
        for chain, hook in HOOKS:
            await self._ipt("-N", chain, check=False)  # exists already: fine
            if not await self._exists(hook, "-j", chain):
                await self._ipt("-I", hook, "1", "-j", chain)

    async def ensure(self, vnet: str, interface: str, network: ipaddress.IPv4Network) -> None:
        rules = rules_for(vnet, interface, network)
        async with self.lock:
            if self.installed.get(vnet) == rules:
                return
            await self._remove(vnet)
            self.used = True
            await self._ensure_chains()
            for rule in rules:
                if not await self._exists(*rule):
                    await self._ipt("-A", *rule)
            self.installed[vnet] = rules

    async def remove(self, vnet: str) -> None:
        async with self.lock:
            await self._remove(vnet)

    async def _remove(self, vnet: str) -> None:
        for rule in self.installed.pop(vnet, []):
            while await self._exists(*rule):
                await self._ipt("-D", *rule)
        if not self.installed:
            await self._drop_chains()

    async def _drop_chains(self) -> None:
        for chain, hook in HOOKS:
            while await self._exists(hook, "-j", chain):
                await self._ipt("-D", hook, "-j", chain)
            await self._ipt("-F", chain, check=False)
            await self._ipt("-X", chain, check=False)

    async def counters(self, vnet: str) -> int:
        """Packets this V-Net's rules refused so far."""
        total = 0
        for chain in (IN_CHAIN, FWD_CHAIN):
            text = await self._ipt("-L", chain, "-v", "-x", "-n", check=False)
            for line in text.splitlines():
                words = line.split()
                if f"mc-vnet:{vnet} " in line + " " and len(words) > 2 and \
                        words[0].isdigit() and words[2] == "DROP":
                    total += int(line.split()[0])
        return total

    async def reset(self) -> None:
        """Remove whatever an earlier run of the agent left in its chains (it owns them);
        nothing to do (one ``iptables -S`` each) when they do not exist."""
        async with self.lock:
            self.installed.clear()
            for chain, _ in HOOKS:
                if await self._exists(chain, flag="-S"):
                    await self._drop_chains()
                    return
