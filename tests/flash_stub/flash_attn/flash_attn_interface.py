"""flash-attn 2's interface, stubbed: see tests/flash_stub/flash_stub.py."""

from flash_stub import dense, varlen


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False, **kwargs):
    out = dense("flash_attn.flash_attn_func", q, k, v, softmax_scale, causal)
    return (out, None, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, return_attn_probs=False, **kwargs):
    out = varlen("flash_attn.flash_attn_varlen_func", q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return (out, None, None) if return_attn_probs else out


def _wrapped_flash_attn_forward(*args, **kwargs):
    raise NotImplementedError("flash-attn stub: the context-parallel kernels are not stubbed")


_wrapped_flash_attn_backward = _wrapped_flash_attn_forward
