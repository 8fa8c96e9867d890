"""A tiny TCP server for ingress tests, run as a workload replica: listens on ``$PORT``.

``http``: an HTTP/1.1 server answering JSON (method, path, headers, body length) for
GET, the body itself for POST, and a chunked body for ``GET /stream``.

``ws``: the ``http`` server that also echoes websocket messages on an ``Upgrade``.
``hang``: accepts connections, reads, never answers (route timeouts). ``flaky``: replica
0 resets every connection before answering, the others serve ``http`` (retries).

``echo``: sends back every byte; on the client's FIN it finishes sending, then sends its
own FIN (half-close aware). ``digest``: reads to EOF, then answers the byte count and
SHA-256 of what it read (for byte-exact checks of large streams without echoing them).
Every reply starts after a first line ``NAME\\n`` (``$MESHCLOUD_NAME``), so a client
knows which replica it reached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import socketserver
import struct
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
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
            return
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

    def websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", self.rfile.read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(size)))
            reply = 10 if opcode == 9 else opcode
            if size < 126:
                frame = bytes([0x80 | reply, size])
            elif size < 65536:
                frame = bytes([0x80 | reply, 126]) + struct.pack("!H", size)
            else:
                frame = bytes([0x80 | reply, 127]) + struct.pack("!Q", size)
            self.wfile.write(frame + data)
            self.wfile.flush()
            if opcode == 8:
                return

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


class Hang(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(1 << 16):
            pass


class Reset(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1 << 16)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


if __name__ == "__main__":
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
    mode = sys.argv[1] if len(sys.argv) > 1 else "echo"
    if mode == "hang" or (mode == "flaky" and os.environ.get("MESHCLOUD_NAME", "").endswith(
            "-0")):
        with Server(address, Hang if mode == "hang" else Reset) as s:
            s.serve_forever()
    if mode in ("http", "ws", "flaky"):
        with ThreadingHTTPServer(address, HttpHandler) as http_server:
            http_server.serve_forever()
    with Server(address, Handler) as s:
        s.serve_forever()
