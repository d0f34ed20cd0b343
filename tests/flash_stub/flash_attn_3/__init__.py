"""flash-attn 3's package, stubbed (its functions are in flash_attn_interface)."""
