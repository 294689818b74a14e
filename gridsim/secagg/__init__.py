"""Secure aggregation (SecAgg+ on the double-masking protocol of Bonawitz et al.).

:mod:`gridsim.secagg.masking` holds the primitives, backed by the Rust core: mask
expansion with a cryptographic PRG, fixed-point quantisation into Z_{2^b}, b-bit
packing, and Shamir sharing of seeds. The protocol state machines build on them.
"""

from __future__ import annotations

from gridsim.secagg.masking import (
    MASK_KEY_DOMAIN,
    SEED_LEN,
    SHAMIR_PRIME,
    SHARE_LEN,
    Dequantized,
    Quantized,
    aes_hardware,
    dequantize_sum,
    derive_mask_key,
    expand_masks,
    mask,
    max_scale,
    pack,
    packed_len,
    pair_stream_id,
    quantize,
    self_stream_id,
    shamir_combine,
    shamir_split,
    share_threshold,
    share_x,
    unpack,
)

__all__ = [
    "MASK_KEY_DOMAIN",
    "SEED_LEN",
    "SHAMIR_PRIME",
    "SHARE_LEN",
    "Dequantized",
    "Quantized",
    "aes_hardware",
    "dequantize_sum",
    "derive_mask_key",
    "expand_masks",
    "mask",
    "max_scale",
    "pack",
    "packed_len",
    "pair_stream_id",
    "quantize",
    "self_stream_id",
    "shamir_combine",
    "shamir_split",
    "share_threshold",
    "share_x",
    "unpack",
]
