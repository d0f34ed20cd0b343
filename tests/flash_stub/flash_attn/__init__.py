"""flash-attn 2, stubbed: see tests/flash_stub/flash_stub.py."""

from flash_attn.flash_attn_interface import flash_attn_func, flash_attn_varlen_func  # noqa: F401

__version__ = "2.8.3"
