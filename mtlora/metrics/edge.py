"""Edge detection: validation loss and an approximate ODS F-measure with a distance tolerance.

``loss``: balanced binary cross-entropy on the **logits** with positive weight 0.95 (the semantics of
:func:`mtlora.losses.balanced_bce_loss` for edges), averaged over every labelled pixel of the data
set. The official ``EdgeMeter`` (see docs/official_implementation.md, "Evaluation") is the only edge "metric" of the MTLoRA code; it
feeds probabilities into the loss as if they were logits, a bug not copied here.

``odsF`` (percent): for each threshold t of the grid (``linspace(0.01, 0.99, N)``, N = 99 by
default), a pixel with ``sigmoid(logit) > t`` is a predicted edge pixel. Tolerance radius
``r = max_dist · sqrt(H² + W²)`` pixels (SEISM's ``maxDist`` convention: 0.0075 on PASCAL, 0.011 on
NYUD). Counted over the whole data set:

* precision(t) = predicted pixels with a label edge pixel within distance r / predicted pixels;
* recall(t) = label edge pixels with a predicted pixel within distance r / label edge pixels;
* F(t) = 2PR / (P + R); ``odsF`` = max over t (one threshold for the whole data set).

Both neighbourhood tests are exact Euclidean-disk dilations (a max filter, see :func:`disk_max`)
on the device, and the per-threshold counts come from a histogram, so the cost does not grow
with the number of thresholds. Differences from the MATLAB SEISM / BSDS benchmark used by the
InvPT school, which make the numbers **not comparable** with their odsF tables:

* no one-to-one (bipartite) matching as in ``correspondPixels``: many predicted pixels may match
  one label pixel, so thick predictions are not penalised in precision;
* no thinning / non-maximum suppression of the thresholded prediction;
* its own threshold grid rather than SEISM's, and evaluation at the
  resolution the data module delivers (448² resized labels in the MTLoRA protocol) rather than
  the original image size.

The benchmark protocol itself (thinning, one-to-one matching, ODS and OIS) is
:mod:`mtlora.metrics.edge_bsds`, run by ``mtlora test --model.edge_eval exact``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def _shift_rows(x: Tensor, dy: int) -> Tensor:
    """``out[..., y, :] = x[..., y + dy, :]`` with zero fill."""
    if dy > 0:
        return F.pad(x[..., dy:, :], (0, 0, 0, dy))
    if dy < 0:
        return F.pad(x[..., :dy, :], (0, 0, -dy, 0))
    return x


def disk_max(x: Tensor, radius: float) -> Tensor:
    """Max filter of a non-negative ``(B, 1, H, W)`` map over the disk ``dy² + dx² <= radius²``.

    Decomposed into one horizontal max-pool per row offset (2·⌊radius⌋ + 1 pools); outside the
    image counts as 0. A slack of 1e-6 px² absorbs the rounding of ``max_dist · diagonal``.
    """
    r_sq = radius * radius + 1e-6
    reach = math.isqrt(math.floor(r_sq))
    out = x
    for dy in range(-reach, reach + 1):
        half = math.isqrt(max(int(r_sq - dy * dy), 0))
        while (half + 1) ** 2 + dy * dy <= r_sq:  # exact integer test against the float radius
            half += 1
        while half > 0 and half * half + dy * dy > r_sq:
            half -= 1
        row = F.max_pool2d(x, (1, 2 * half + 1), stride=1, padding=(0, half)) if half > 0 else x
        out = torch.maximum(out, _shift_rows(row, dy))
    return out


class EdgeMetric(DenseMetric):
    """Edge ``loss`` (balanced BCE on logits) and approximate ``odsF`` (percent), see module doc.

    ``update(logits, target)``: both ``(B, 1, H, W)``, target in {0, 1}, 255 ignored (ignored pixels
    are neither predicted nor label edge pixels). ``compute()`` → ``{"loss", "odsF"}``, NaN before
    any labelled pixel. ``higher_is_better`` refers to ``odsF`` (the Δm metric); the loss is lower-better.
    """

    higher_is_better = True

    loss_sum: Tensor
    count: Tensor
    true_pos: Tensor
    pred_pos: Tensor
    recalled: Tensor
    actual_pos: Tensor

    def __init__(
        self, max_dist: float = 0.0075, num_thresholds: int = 99, pos_weight: float = 0.95, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if max_dist < 0 or num_thresholds < 1 or not 0 <= pos_weight <= 1:
            raise ValueError(
                f"need max_dist >= 0, num_thresholds >= 1, 0 <= pos_weight <= 1; got {max_dist}, "
                f"{num_thresholds}, {pos_weight}"
            )
        self.max_dist = float(max_dist)
        self.pos_weight = float(pos_weight)
        grid = (
            [0.5]
            if num_thresholds == 1
            else [0.01 + 0.98 * i / (num_thresholds - 1) for i in range(num_thresholds)]
        )
        self.add_thresholds("thresholds", grid)
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("true_pos", "pred_pos", "recalled"):
            self.add_state(name, torch.zeros(num_thresholds, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("actual_pos", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        """Add a batch; ``sample_mask`` ``(B,)`` drops whole images (DDP padding duplicates)."""
        if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape != target.shape:
            raise ValueError(
                f"expected logits and target of shape (B, 1, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = apply_sample_mask(target, sample_mask)
        logits = logits.float()
        valid = target != IGNORE_INDEX
        label = (target >= 0.5) & valid

        # Balanced BCE: w·softplus(-x) on edge pixels, (1-w)·softplus(x) on the others.
        w = self.pos_weight
        per_pixel = torch.where(label, w * F.softplus(-logits), (1 - w) * F.softplus(logits))
        self.loss_sum += torch.where(valid, per_pixel, 0.0).double().sum()
        self.count += valid.sum()

        prob = torch.where(valid, torch.sigmoid(logits), 0.0)
        radius = self.max_dist * math.hypot(logits.shape[-2], logits.shape[-1])
        near_label = disk_max(label.float(), radius) > 0
        best_near = disk_max(prob, radius)  # highest probability within the radius

        n = self.thresholds.numel()
        bucket = threshold_bucket(prob.reshape(1, -1), self.thresholds)
        self.pred_pos += count_above(bucket, valid.reshape(1, -1), n)[0]
        self.true_pos += count_above(bucket, (valid & near_label).reshape(1, -1), n)[0]
        bucket = threshold_bucket(best_near.reshape(1, -1), self.thresholds)
        self.recalled += count_above(bucket, label.reshape(1, -1), n)[0]
        self.actual_pos += label.sum()

    def compute(self) -> dict[str, Tensor]:
        """``{"loss": mean balanced BCE per labelled pixel, "odsF": max_t F(t) in percent}``."""
        loss = self.loss_sum / self.count.clamp_min(1)
        precision = self.true_pos.double() / self.pred_pos.clamp_min(1)
        recall = self.recalled.double() / self.actual_pos.clamp_min(1)
        f = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        return {
            "loss": nan_where_empty(loss, self.count),
            "odsF": nan_where_empty(f.max() * PERCENT, self.count),
        }
