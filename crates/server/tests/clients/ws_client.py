"""A WebSocket client on a raw socket, through the gateway's HTTP listener.

Usage: python3 ws_client.py HOST PORT PATH TOKEN MESSAGE
Prints {"status": N, "accepted": bool, "messages": [...]}: the handshake's status, whether the
Sec-WebSocket-Accept answer is right, and the text messages received (the upstream's greeting,
then the echo of MESSAGE).
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys


def read_frame(sock_file):
    head = sock_file.read(2)
    if len(head) < 2:
        return None, None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", sock_file.read(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", sock_file.read(8))[0]
    return opcode, sock_file.read(length)


def send_frame(sock, data, opcode=1):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(data))
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def main():
    host, port, path, token, message = sys.argv[1:6]
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    f = sock.makefile("rb")
    status_line = f.readline().decode()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    result = {"status": status, "accepted": headers.get("sec-websocket-accept") == expected.decode(), "messages": []}
    if status == 101:
        opcode, data = read_frame(f)
        result["messages"].append(data.decode())
        send_frame(sock, message.encode())
        opcode, data = read_frame(f)
        result["messages"].append(data.decode())
        send_frame(sock, b"", opcode=8)
        read_frame(f)
    else:
        length = int(headers.get("content-length", "0"))
        result["body"] = json.loads(f.read(length) or b"null")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
