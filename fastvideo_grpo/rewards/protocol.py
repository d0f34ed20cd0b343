"""Wire format between trainer ranks and the reward process: no pickle.

A message is an 8-byte big-endian header length, a UTF-8 JSON header, then `payload_bytes`
raw bytes. A request is one of:

- frames: {"id", "prompt", "shape": [T, H, W, 3]} with the uint8 frames as payload, C order;
- a file: {"id", "prompt", "path"} with no payload; the server reads the video itself
  (fastvideo_grpo.video_io.read_video), so the path is one the server can open.

A reply is {"id", "scores": {name: float}} or {"id", "error": message}.
"""

from __future__ import annotations

import json
import socket
import struct

import numpy as np
import torch

HEADER = struct.Struct(">Q")


def frames_request(request_id: int, prompt: str, video: torch.Tensor) -> tuple[dict, bytes]:
    """The header and payload of a request carrying uint8 frames [T, H, W, 3]."""
    return {"id": request_id, "prompt": prompt, "shape": list(video.shape)}, video.contiguous().numpy().tobytes()


def path_request(request_id: int, prompt: str, path: str) -> tuple[dict, bytes]:
    """The header and payload of a request naming a video file the server reads."""
    return {"id": request_id, "prompt": prompt, "path": path}, b""


def request_video(header: dict, payload: bytes) -> torch.Tensor:
    """The uint8 frames [T, H, W, 3] a request carries or names."""
    if "path" in header:
        from fastvideo_grpo.video_io import read_video

        return read_video(header["path"])
    return torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).reshape(header["shape"]).copy())


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
