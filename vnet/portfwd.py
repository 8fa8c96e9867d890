"""Published ports of a replica that runs in a network namespace of its own.

A process replica publishes its ports on the node (``PORT`` / ``HOST``): the ingress and
the health probes connect to ``host_ip:host_port`` there. A replica on a V-Net listens
inside its own namespace instead (told ``HOST=0.0.0.0``: its loopback and its V-Net
addresses), so the node forwards: a listener on ``host_ip:host_port`` in the node's
network, and for each connection a socket made *inside* the replica's namespace (by a
short-lived thread that enters it: a socket stays in the namespace it was made in)
connected to ``127.0.0.1:host_port`` there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import trio

from apps.runtimes.network import enter_netns

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CHUNK = 65536


def socket_in(netns: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket in the network namespace at path ``netns`` (blocking: run it in a
    worker thread). The thread that enters the namespace is made for it and ends."""
    box: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                enter_netns(fd)
            finally:
                os.close(fd)
            box.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller
            box.append(exc)

    thread = threading.Thread(target=work, name="vnet-netns-socket", daemon=True)
    thread.start()
    thread.join()
    result = box[0] if box else OSError("no socket made")
    if isinstance(result, BaseException):
        raise result
    return result


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _connect(netns: str, port: int) -> trio.SocketStream:
    sock = trio.socket.from_stdlib_socket(await trio.to_thread.run_sync(socket_in, netns))
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def forward(netns: str, host_ip: str, port: int, *,
                  task_status: trio.TaskStatus[list[trio.SocketListener]]
                  = trio.TASK_STATUS_IGNORED) -> None:
    """Forward ``host_ip:port`` on this node to ``127.0.0.1:port`` in ``netns`` until
    cancelled (OSError when the port cannot be bound)."""
    listeners = await trio.open_tcp_listeners(port, host=host_ip)

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            try:
                inner = await _connect(netns, port)
            except (OSError, trio.TooSlowError) as exc:
                log.debug("forward to %s port %d: %s", netns, port, exc)
                return
            async with inner, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, inner)
                nursery.start_soon(_pump, inner, client)

    await trio.serve_listeners(handle, listeners, task_status=task_status)
