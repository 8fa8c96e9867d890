"""A tiny TCP server for ingress tests, run as a workload replica: listens on ``$PORT``.

``echo``: sends back every byte; on the client's FIN it finishes sending, then sends its
own FIN (half-close aware). ``digest``: reads to EOF, then answers the byte count and
SHA-256 of what it read (for byte-exact checks of large streams without echoing them).
Every reply starts after a first line ``NAME\\n`` (``$MESHCLOUD_NAME``), so a client
knows which replica it reached.
"""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import sys


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.sendall(f"{os.environ.get('MESHCLOUD_NAME', '?')}\n".encode())
        mode = sys.argv[1] if len(sys.argv) > 1 else "echo"
        digest = hashlib.sha256()
        count = 0
        while data := sock.recv(1 << 20):
            if mode == "digest":
                digest.update(data)
                count += len(data)
            else:
                sock.sendall(data)
        if mode == "digest":
            sock.sendall(f"{count} {digest.hexdigest()}\n".encode())
        sock.shutdown(socket.SHUT_WR)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler) as s:
        s.serve_forever()
