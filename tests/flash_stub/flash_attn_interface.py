"""flash-attn 3's Python interface, stubbed: see flash_stub.py."""

from flash_stub import dense, varlen


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, return_attn_probs=False, **kwargs):
    out = dense("flash_attn_3.flash_attn_func", q, k, v, softmax_scale, causal)
    return (out, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                           causal=False, return_attn_probs=False, **kwargs):
    out = varlen("flash_attn_3.flash_attn_varlen_func", q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return (out, None) if return_attn_probs else out
