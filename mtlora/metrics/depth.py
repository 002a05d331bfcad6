"""Depth: RMSE and log-RMSE accumulated over the pixels of the whole data set.

The official ``DepthMeter`` (and the offline ``eval_depth``) sums squared errors over every valid
pixel of the data set, divides by the pixel count and takes the square root at the end
(pixel-level, not a mean of per-image RMSEs); this metric does the same. Valid pixels: label not
255. The log error additionally needs a positive label; the prediction is clamped at 1e-9 before
the logarithm, as in the official meter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora.metrics._common import DenseMetric, apply_sample_mask, nan_where_empty
from mtlora.tasks import IGNORE_INDEX


class DepthMetric(DenseMetric):
    """``rmse`` and ``log_rmse`` (natural log) of depth, in the target's units (metres).

    ``update(logits, target)``: both ``(B, 1, H, W)``; the raw model output is the depth.
    ``compute()`` → ``{"rmse", "log_rmse"}``, each NaN until it has seen a valid pixel.
    """

    higher_is_better = False

    sq_sum: Tensor
    count: Tensor
    log_sq_sum: Tensor
    log_count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("log_sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("log_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        """Add a batch; ``sample_mask`` ``(B,)`` drops whole images (DDP padding duplicates)."""
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if logits.shape != target.shape or logits.shape[1] != 1:
            raise ValueError(
                f"expected logits and target of shape (B, 1, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = apply_sample_mask(target, sample_mask)
        pred = logits.double()
        label = target.double()
        valid = target != IGNORE_INDEX
        self.sq_sum += torch.where(valid, (pred - label).square(), 0.0).sum()
        self.count += valid.sum()
        log_valid = valid & (label > 0)
        log_err = pred.clamp_min(1e-9).log() - label.clamp_min(1e-9).log()
        self.log_sq_sum += torch.where(log_valid, log_err.square(), 0.0).sum()
        self.log_count += log_valid.sum()

    def compute(self) -> dict[str, Tensor]:
        """Root of the mean squared (log) error over every valid pixel seen."""
        rmse = (self.sq_sum / self.count.clamp_min(1)).sqrt()
        log_rmse = (self.log_sq_sum / self.log_count.clamp_min(1)).sqrt()
        return {
            "rmse": nan_where_empty(rmse, self.count),
            "log_rmse": nan_where_empty(log_rmse, self.log_count),
        }
