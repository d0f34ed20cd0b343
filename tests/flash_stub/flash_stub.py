"""Stand-ins for flash-attn 2 (`flash_attn`) and 3 (`flash_attn_interface`, `flash_attn_3`),
for tests, on the Python path (PYTHONPATH=tests/flash_stub for a subprocess): the packages'
functions with their signatures, computed with torch's SDPA on any device, each call
recorded in CALLS (and appended to the file $FLASH_STUB_LOG, a JSON line a call). The
dist-info folders make diffusers find the packages installed.

q, k, v: [B, S, H, D]; varlen: [total tokens, H, D] with cumulative sequence starts."""

import json
import os

import torch
import torch.nn.functional as F

_sdpa = F.scaled_dot_product_attention  # bound here: a test may patch F's to record its own calls
CALLS: list[dict] = []


def _record(kernel: str, q: torch.Tensor, k: torch.Tensor, **extra) -> None:
    call = {"kernel": kernel, "q": list(q.shape), "k": list(k.shape), **extra}
    CALLS.append(call)
    if os.environ.get("FLASH_STUB_LOG"):
        with open(os.environ["FLASH_STUB_LOG"], "a") as f:
            f.write(json.dumps(call) + "\n")


def _attend(q, k, v, softmax_scale, causal):
    out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2)


def dense(kernel, q, k, v, softmax_scale=None, causal=False):
    _record(kernel, q, k)
    return _attend(q, k, v, softmax_scale, causal)


def varlen(kernel, q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale=None, causal=False):
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    _record(kernel, q, k, cu_seqlens_k=starts_k)
    return torch.cat([_attend(q[None, a:b], k[None, c:d], v[None, c:d], softmax_scale, causal)[0]
                      for a, b, c, d in zip(starts_q, starts_q[1:], starts_k, starts_k[1:])])
