"""The optimiser recipe of the official MTLoRA training: AdamW groups and a per-step warm-up + cosine.

Pure torch (no Lightning), so the recipe can be read and tested on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["adamw", "warmup_cosine", "warmup_cosine_schedule"]


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, warmup_lr: float, peak_lr: float, min_lr: float
) -> float:
    """Learning rate at ``step``: linear warm-up from ``warmup_lr``, then cosine to ``min_lr``.

    Same shape as timm's CosineLRScheduler with ``warmup_prefix=True`` stepped per iteration,
    which is what the official recipe uses.
    """
    if step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))


def adamw(
    model: nn.Module, lr: float, weight_decay: float, extra_no_decay: list[nn.Parameter] | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only, betas (0.9, 0.999), eps 1e-8.

    As the official ``set_weight_decay``: no decay for 1-D parameters and biases; the 2-D
    relative-position bias tables *are* decayed.  ``extra_no_decay`` joins the undecayed group
    (e.g. learned loss-weighting log-variances).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen weights never reach the optimizer (nor its state)
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    no_decay += list(extra_no_decay or [])
    # fused: one kernel per step, and it skips non-finite steps on the device (mtlora.training.nonfinite)
    fused = all(p.device.type in _get_fused_kernels_supported_devices() for p in decay + no_decay)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=fused or None,
    )


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, warmup_lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :func:`warmup_cosine` around the optimizer's learning rate (its peak)."""
    peak = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, warmup_lr, peak, min_lr) / peak
    )
