"""The node's host ports for the endpoints of the replicas it runs.

The ports are ephemeral ones the kernel hands out (bind to port 0), so any number of
replicas share a machine. A replica keeps its port for as long as the node has it in the
book (the reconciler compares spec hashes, and the port is part of the spec): the book
is kept in ``DATA_DIR/ingress/ports.json``, so an agent restarted over running replicas
adopts them instead of restarting them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Collection
from pathlib import Path

log = logging.getLogger(__name__)

BookKey = tuple[str, int, str]
"""(workload, replica index, endpoint)."""


def ephemeral_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free now (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PortBook:
    def __init__(self, path: Path | None,
                 allocate: Callable[[], int] = ephemeral_port) -> None:
        self.path = path
        self.allocate = allocate
        self.ports: dict[BookKey, int] = {}
        if path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            for item in data.get("ports", []):
                workload, index, endpoint, port = item
                if isinstance(port, int) and 0 < port < 65536:
                    self.ports[(str(workload), int(index), str(endpoint))] = port
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable port book %s: %s", self.path, exc)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        items = [[w, i, e, p] for (w, i, e), p in sorted(self.ports.items())]
        tmp.write_text(json.dumps({"ports": items}))
        os.replace(tmp, self.path)

    def port(self, workload: str, index: int, endpoint: str) -> int:
        """The host port of this replica's endpoint, allocated on first use."""
        key = (workload, index, endpoint)
        port = self.ports.get(key)
        if port is None:
            taken = set(self.ports.values())
            port = self.allocate()
            while port in taken:
                port = self.allocate()
            self.ports[key] = port
            self._save()
        return port

    def lookup(self, workload: str, index: int, endpoint: str) -> int | None:
        return self.ports.get((workload, index, endpoint))

    def forget_except(self, keep: Collection[tuple[str, int]]) -> None:
        """Drop the ports of replicas not in ``keep`` ((workload, index) pairs)."""
        gone = [k for k in self.ports if (k[0], k[1]) not in keep]
        for key in gone:
            del self.ports[key]
        if gone:
            self._save()
