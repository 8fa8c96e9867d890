"""The hook through which a runtime gives a replica a network of its own (a V-Net).

A runtime that has a :class:`ReplicaNetwork` asks it, just before it starts a replica,
whether the replica gets a network namespace (:meth:`ReplicaNetwork.prepare`); the
network's owner (the V-Net service) makes the namespace with its interfaces and
addresses and answers with its path and the variables that tell the replica about it.
The process runtime then starts the replica inside that namespace
(:func:`enter_netns`, between fork and exec). A container already has a namespace of its
own: the podman runtime tells the hook its main process once it runs
(:meth:`ReplicaNetwork.joined`), and the owner wires that namespace the same way.
Everything else about the namespace (addresses that change, removal once the replica is
gone) stays with its owner.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from apps.runtimes.spec import ContainerSpec

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class ReplicaNet:
    netns: str
    """Path of the network namespace to run the replica in (e.g. /run/netns/NAME)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables for the replica (its addresses, its resolver)."""


class ReplicaNetwork(Protocol):
    async def prepare(self, spec: ContainerSpec) -> ReplicaNet | None:
        """The namespace ``spec``'s replica runs in, made ready; None: the host's."""
        ...

    def networks(self, workload: str) -> tuple[str, ...]:
        """The networks ``workload``'s replicas join: part of their desired spec (the
        reconciler restarts a running replica into them, or out of them, when they
        change; a process cannot move its sockets to another namespace)."""
        ...

    @property
    def network_tables(self) -> tuple[str, ...]:
        """The state tables whose rows :meth:`networks` reads: the reconciler watches them,
        so an attach or detach starts a pass at once."""
        ...

    async def joined(self, spec: ContainerSpec, pid: int) -> None:
        """A container runtime started ``spec``'s replica (main process ``pid``) in a
        namespace of its own: wire that one (a container keeps its runtime's network,
        and gets the V-Nets' interfaces beside it)."""
        ...


_libc: ctypes.CDLL | None = None


def load_setns() -> None:
    """Load libc's ``setns`` (before a fork: the child must not load libraries)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd`` (needs
    CAP_SYS_ADMIN: call it before dropping root). Raises OSError."""
    load_setns()
    assert _libc is not None
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")
