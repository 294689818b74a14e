"""Secure aggregation (SecAgg+ on the double-masking protocol of Bonawitz et al.).

:mod:`gridsim.secagg.masking` holds the primitives, backed by the Rust core: mask
expansion with a cryptographic PRG, fixed-point quantisation into Z_{2^b}, b-bit
packing, and Shamir sharing of seeds. The protocol state machines build on them:
:class:`SecAggClient` (a meter, :mod:`gridsim.secagg.client`) and
:class:`SecAggServer` (the aggregator, :mod:`gridsim.secagg.server`) exchange the
signed messages of :mod:`gridsim.secagg.messages` over the neighbour graph of
:mod:`gridsim.secagg.graph`; the server module documents the order in which a
transport drives them.
"""

from __future__ import annotations

from gridsim.secagg.client import SecAggClient
from gridsim.secagg.graph import default_degree, neighbor_graph, threshold_for
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
from gridsim.secagg.messages import Stage
from gridsim.secagg.server import (
    Outbox,
    Rejection,
    RoundState,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
)

__all__ = [
    "MASK_KEY_DOMAIN",
    "SEED_LEN",
    "SHAMIR_PRIME",
    "SHARE_LEN",
    "Dequantized",
    "Outbox",
    "Quantized",
    "Rejection",
    "RoundState",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "Stage",
    "aes_hardware",
    "default_degree",
    "dequantize_sum",
    "derive_mask_key",
    "expand_masks",
    "mask",
    "max_scale",
    "neighbor_graph",
    "pack",
    "packed_len",
    "pair_stream_id",
    "quantize",
    "self_stream_id",
    "shamir_combine",
    "shamir_split",
    "share_threshold",
    "share_x",
    "threshold_for",
    "unpack",
]
