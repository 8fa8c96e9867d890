"""A tiny TCP server for ingress tests, run as a workload replica: listens on ``$PORT``.

``http``: an HTTP/1.1 server answering JSON (method, path, headers, body length) for
GET, the body itself for POST, and a chunked body for ``GET /stream``.

``echo``: sends back every byte; on the client's FIN it finishes sending, then sends its
own FIN (half-close aware). ``digest``: reads to EOF, then answers the byte count and
SHA-256 of what it read (for byte-exact checks of large streams without echoing them).
Every reply starts after a first line ``NAME\\n`` (``$MESHCLOUD_NAME``), so a client
knows which replica it reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                piece = f"part{i};".encode()
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"method": "GET", "path": self.path,
                           "replica": os.environ.get("MESHCLOUD_NAME", "?"),
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        left = length
        while left:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                break
            self.wfile.write(data)
            left -= len(data)


if __name__ == "__main__":
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        with ThreadingHTTPServer(address, HttpHandler) as http_server:
            http_server.serve_forever()
    with Server(address, Handler) as s:
        s.serve_forever()
