"""A real HTTP API on loopback for the HTTP adapter's tests (Python's own threading HTTP server).

Usage: python3 http_upstream.py   -> prints "ready PORT" once it listens.

  ANY  /v1/echo/...            what the server received: method, path, query, headers, body
  GET  /v1/customers           JSON with personal data in nested objects and arrays
  GET  /v1/gzip                the same JSON, gzip-encoded
  GET  /v1/deflate             the same JSON, deflate-encoded (zlib)
  GET  /v1/brotli              the same JSON, brotli-encoded
  GET  /v1/slow?s=N            answers after N seconds
  GET  /v1/text                text/plain with an email address
  GET  /v1/download?size=N     N bytes of application/octet-stream, streamed in 64 KiB chunks
  POST /v1/invoices/ID/refund  {"refunded": ID}
  GET  /v1/ws                  a WebSocket: first sends the X-Gatehouse-Identity it saw, then
                               echoes each text message
  ANY  /admin/...              {"admin": true}
  GET  /_calls                 every request received so far: ["METHOD /path?query", ...]
"""

import base64
import gzip
import hashlib
import json
import struct
import time
import zlib

import brotli
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

CALLS = []
LOCK = threading.Lock()

CUSTOMERS = {
    "customers": [
        {
            "name": "Ann",
            "email": "ann@example.com",
            "card": "4242 4242 4242 4242",
            "address": {"city": "Oslo", "street": "Karl Johans gate 1"},
            "tags": ["vip", "contact: bob@example.org"],
        },
        {"name": "Ben", "email": "ben@example.net", "card": None, "address": {"city": "Bergen"}, "tags": []},
    ],
    "total": 2,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, value, status=200, encoding=None):
        body = json.dumps(value).encode()
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "deflate":
            body = zlib.compress(body)
        elif encoding == "br":
            body = brotli.compress(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        with LOCK:
            if url.path != "/_calls":
                CALLS.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/_calls":
            return self.send_json(CALLS)
        if url.path == "/v1/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if url.path.startswith("/v1/echo"):
            return self.send_json(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": url.query,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"),
                }
            )
        if url.path == "/v1/customers":
            return self.send_json(CUSTOMERS)
        if url.path == "/v1/gzip":
            return self.send_json(CUSTOMERS, encoding="gzip")
        if url.path == "/v1/deflate":
            return self.send_json(CUSTOMERS, encoding="deflate")
        if url.path == "/v1/brotli":
            return self.send_json(CUSTOMERS, encoding="br")
        if url.path == "/v1/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            return self.send_json({"slow": True})
        if url.path == "/v1/text":
            text = b"Contact carol@example.com for access.\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            return self.wfile.write(text)
        if url.path == "/v1/download":
            size = int(parse_qs(url.query).get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = bytes(range(256)) * 256
            sent = 0
            while sent < size:
                part = chunk[: min(len(chunk), size - sent)]
                self.wfile.write(part)
                sent += len(part)
            return None
        if url.path.startswith("/v1/invoices/") and url.path.endswith("/refund") and self.command == "POST":
            invoice = url.path.split("/")[3]
            return self.send_json({"refunded": invoice, "request": body.decode("utf-8", "replace")})
        if url.path.startswith("/admin"):
            return self.send_json({"admin": True})
        return self.send_json({"error": "not found"}, status=404)

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.send_frame(("identity: " + self.headers.get("X-Gatehouse-Identity", "")).encode())
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                break
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.send_frame(b"", opcode=8)
                break
            self.send_frame(b"echo: " + data)
        self.close_connection = True

    def send_frame(self, data, opcode=1):
        head = bytes([0x80 | opcode])
        if len(data) < 126:
            head += bytes([len(data)])
        else:
            head += bytes([126]) + struct.pack(">H", len(data))
        self.wfile.write(head + data)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
