"""Saliency: the PEFT line's "mIoU" (paper column) and a correctly computed β²=0.3 maxF.

``mIoU`` follows ``SaliencyMeterWithNoBeta`` of the official code (docs/official_implementation.md, "Evaluation"): p = sigmoid(logit),
binary prediction ``p > thr`` for the 15 thresholds ``linspace(0.2, 0.9, 15)``, Jaccard **per image**
(1 when label and prediction are both empty), averaged over images per threshold, then the
maximum over thresholds.

``maxF`` is the InvPT-school definition (β² = 0.3, precision and recall from TP / predicted
positives / actual positives summed over the whole data set, F per threshold, max over
thresholds) on the grid 0.05, 0.10, ..., 0.95 (their ``arange(0.05, 1, 0.05)``), with a single
sigmoid. The official "Beta maxF" applies the sigmoid twice (probabilities squashed into
[0.5, 0.73]) and the official no-beta "maxF" uses β² = 1 with per-image averaged P/R; neither is
copied. Differences at the threshold itself (``>`` here, ``>=`` in InvPT) have measure zero.

Pixels labelled 255 are ignored by both; an image without any labelled pixel is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlora.metrics._common import (
    PERCENT,
    DenseMetric,
    apply_sample_mask,
    count_above,
    nan_where_empty,
    threshold_bucket,
)
from mtlora.tasks import IGNORE_INDEX

MIOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 10) for i in range(15))
"""0.20, 0.25, ..., 0.90: ``np.linspace(0.2, 0.9, 15)`` of the official meter."""
MAXF_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 10) for i in range(1, 20))
"""0.05, 0.10, ..., 0.95: the InvPT-school grid."""


class SaliencyMetric(DenseMetric):
    """Saliency ``mIoU`` (paper column) and ``maxF`` (β² = 0.3), both in percent.

    ``update(logits, target)``: logits ``(B, 1, H, W)``, target ``(B, 1, H, W)`` in {0, 1} (≥ 0.5 is
    salient), 255 ignored. ``compute()`` → ``{"mIoU", "maxF"}``, NaN before any labelled pixel.
    """

    higher_is_better = True

    jaccard_sum: Tensor
    num_images: Tensor
    true_pos: Tensor
    pred_pos: Tensor
    actual_pos: Tensor

    def __init__(
        self,
        miou_thresholds: Sequence[float] = MIOU_THRESHOLDS,
        maxf_thresholds: Sequence[float] = MAXF_THRESHOLDS,
        beta_sq: float = 0.3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.add_thresholds("miou_thr", miou_thresholds)
        self.add_thresholds("maxf_thr", maxf_thresholds)
        self.beta_sq = float(beta_sq)
        n_i, n_f = self.miou_thr.numel(), self.maxf_thr.numel()
        self.add_state("jaccard_sum", torch.zeros(n_i, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("true_pos", torch.zeros(n_f, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("pred_pos", torch.zeros(n_f, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("actual_pos", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        """Add a batch; ``sample_mask`` ``(B,)`` drops whole images (DDP padding duplicates)."""
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape != target.shape:
            raise ValueError(
                f"expected logits and target of shape (B, 1, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = apply_sample_mask(target, sample_mask).flatten(1)  # (B, P)
        prob = torch.sigmoid(logits.float()).flatten(1)  # (B, P)
        valid = target != IGNORE_INDEX
        label = (target >= 0.5) & valid

        # Per-image Jaccard at every threshold (official "mIoU").
        n_i = self.miou_thr.numel()
        bucket = threshold_bucket(prob, self.miou_thr)
        inter = count_above(bucket, label, n_i)  # (B, N)
        predicted = count_above(bucket, valid, n_i)  # (B, N)
        union = predicted + label.sum(1, keepdim=True) - inter
        jaccard = torch.where(union > 0, inter.double() / union.clamp_min(1), 1.0)
        has_pixels = valid.any(1)  # (B,)
        self.jaccard_sum += (jaccard * has_pixels.unsqueeze(1)).sum(0)
        self.num_images += has_pixels.sum()

        # Data-set level counts for the β-weighted maxF.
        n_f = self.maxf_thr.numel()
        bucket = threshold_bucket(prob.reshape(1, -1), self.maxf_thr)
        self.true_pos += count_above(bucket, label.reshape(1, -1), n_f)[0]
        self.pred_pos += count_above(bucket, valid.reshape(1, -1), n_f)[0]
        self.actual_pos += label.sum()

    def compute(self) -> dict[str, Tensor]:
        """``{"mIoU": max_t mean_images Jaccard, "maxF": max_t F_β}`` in percent."""
        miou = (self.jaccard_sum / self.num_images.clamp_min(1)).max() * PERCENT
        tp = self.true_pos.double()
        precision = tp / self.pred_pos.clamp_min(1)
        recall = tp / self.actual_pos.clamp_min(1)
        f = (1 + self.beta_sq) * precision * recall / (self.beta_sq * precision + recall).clamp_min(1e-12)
        return {
            "mIoU": nan_where_empty(miou, self.num_images),
            "maxF": nan_where_empty(f.max() * PERCENT, self.num_images),
        }
