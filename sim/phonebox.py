"""A phone's view of the machine for real-process tests and benches (issue 20).

An app on Android sees no ``/dev/net/tun``. :func:`no_tun_prefix` runs a command in its
own mount namespace (``unshare --mount``, private propagation: nothing leaks to the host)
whose ``/dev`` is a fresh tmpfs holding only what a process needs: ``null``, ``zero``,
``full``, ``random``, ``urandom``, ``tty``, ``ptmx``, ``pts``, ``shm`` and the ``fd``
links. No ``net/tun``: the agent there finds no TUN device and offers V-Nets through the
userspace mode only. Needs root (to unshare and mount); the command may drop to another
user afterwards. The process keeps the pid (``unshare`` execs it).
"""

from __future__ import annotations

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0), ("ptmx", 5, 2))

PRIVATE_DEV = "; ".join([
    "mount -t tmpfs -o mode=755,nosuid,size=1m meshcloud-dev /dev",
    *(f"mknod -m 666 /dev/{name} c {major} {minor}" for name, major, minor in DEVICES),
    "mkdir /dev/pts /dev/shm",
    "mount -t tmpfs -o mode=1777,nosuid,nodev,size=16m meshcloud-shm /dev/shm",
    "ln -s /proc/self/fd /dev/fd",
    "ln -s /proc/self/fd/0 /dev/stdin",
    "ln -s /proc/self/fd/1 /dev/stdout",
    "ln -s /proc/self/fd/2 /dev/stderr",
])
"""Shell commands (run as root inside the new mount namespace) that replace ``/dev``."""


def no_tun_prefix(then: str = 'exec "$@"') -> list[str]:
    """A command prefix (``sim.agents.Agent.prefix``) that gives the command a ``/dev``
    without ``net/tun``; ``then`` is the shell that runs it (the command is ``"$@"``)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
            f"{PRIVATE_DEV}; {then}", "sh"]
