"""Activation recomputation (gradient checkpointing), full or selective.

Why selective: with frozen weights, LoRA saves weight gradients but not activations — the
low-rank A of every adapted layer needs that layer's input, which full fine-tuning keeps for its
weight gradient anyway.  MTLoRA's task-specific blocks add T full-width copies of the residual,
LayerNorm, fc1/GELU and patch-merging activations per stage, so without recomputation it keeps
*more* activations than full fine-tuning.  Yet every one of those task copies is cheap element-wise
work on top of a few large GEMMs whose outputs are shared by all tasks.

``selective`` therefore keeps the outputs of the expensive operations — dense matmuls,
attention, convolutions — and recomputes everything else in backward (norms, activations,
dropout, residual adds, window shuffles, and the low-rank up-projections ``B`` whose contraction
is only the adapter rank).  The recomputation costs element-wise passes and a few rank-r GEMMs,
not the block's dense FLOPs; ``full`` recomputes the whole block, dense GEMMs included, and keeps
only the block inputs.  Both are exact: dropout and drop-path masks are replayed from the saved
RNG state.  Built on ``torch.utils.checkpoint`` with a selective-checkpoint policy, so it also
works under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Checkpointing = bool | Literal["selective"]

# A matmul whose contraction dimension is at most this is a low-rank up-projection (adapter B):
# recomputing it costs rank/width of a dense GEMM, keeping it costs a full-width activation.
LOW_RANK_MAX = 64

_aten = torch.ops.aten
_MATMULS = {  # op -> position of the left operand, whose last dimension is the contraction
    _aten.mm: 0,
    _aten.bmm: 0,
    _aten.addmm: 1,
    _aten.baddbmm: 1,
}
_ALWAYS_SAVE = {
    _aten.convolution,
    _aten._scaled_dot_product_flash_attention,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_cudnn_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_fused_attention_overrideable,
}


def checkpoint_mode(value: Checkpointing | str | None, option: str = "gradient_checkpointing") -> str:
    """``False``/``True``/``"selective"`` (also ``"none"``/``"full"``) -> ``none``/``full``/``selective``."""
    if value is None or value is False or value == "none":
        return "none"
    if value is True or value == "full":
        return "full"
    if value == "selective":
        return "selective"
    raise ValueError(f"{option}: expected false, true (full) or 'selective', got {value!r}")


def selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep the outputs of dense matmuls, attention and convolutions; recompute the rest."""
    packet = getattr(op, "overloadpacket", op)
    if packet in _ALWAYS_SAVE:
        return CheckpointPolicy.MUST_SAVE
    if packet in _MATMULS:
        left = args[_MATMULS[packet]]
        if left.shape[-1] > LOW_RANK_MAX:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_checkpointed(fn: Callable[..., Any], *args: Any, mode: str) -> Any:
    """``fn(*args)``, its activations recomputed in backward as ``mode`` says (``none`` runs it plainly)."""
    if mode == "none" or not torch.is_grad_enabled():
        return fn(*args)
    if mode == "full":
        return checkpoint(fn, *args, use_reentrant=False)
    context = partial(create_selective_checkpoint_contexts, selective_policy)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context)
