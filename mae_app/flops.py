"""The one FLOP counter of the project: fvcore's forward count, reported as FLOPs (2 per
multiply-accumulate; fvcore counts one per MAC), with a handler for `scaled_dot_product_attention`,
which fvcore does not know and would otherwise leave out silently (a ViT's attention matrices).
The comparison report and the benchmarks (`benchmarks.common.forward_flops`) count with it."""

from __future__ import annotations

import torch


def _sdpa_macs(node_inputs, node_outputs) -> int:
    """q @ k^T plus attn @ v, in multiply-accumulates, as fvcore's handlers count."""
    q, k = (i.type().sizes() for i in node_inputs[:2])
    *batch, nq, d = q
    nk, dv = k[-2], node_outputs[0].type().sizes()[-1]
    batch_size = 1
    for s in batch:
        batch_size *= s
    return batch_size * nq * nk * (d + dv)


def flop_count(model: torch.nn.Module, inputs: tuple) -> tuple[float, dict]:
    """Forward FLOPs of `model(*inputs)` and their split by operator (both 2 per MAC).
    Operators fvcore has no handler for besides attention (element-wise ops, norms) are not counted,
    as is usual for FLOP tables."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    macs = analysis.total()
    return 2.0 * macs, {"by_operator": {k: 2.0 * v for k, v in analysis.by_operator().items()}}
