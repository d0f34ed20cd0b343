"""Wire format between trainer ranks and the reward process: no pickle.

A message is an 8-byte big-endian header length, a UTF-8 JSON header, then `payload_bytes`
raw bytes (a request's uint8 frames [T, H, W, 3], C order).
"""

from __future__ import annotations

import json
import socket
import struct

HEADER = struct.Struct(">Q")


def send_message(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    body = json.dumps({**header, "payload_bytes": len(payload)}).encode()
    sock.sendall(HEADER.pack(len(body)) + body + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> tuple[dict, bytes]:
    (length,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    header = json.loads(_recv_exact(sock, length))
    return header, _recv_exact(sock, header["payload_bytes"]) if header["payload_bytes"] else b""
