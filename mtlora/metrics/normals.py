"""Surface normals: angular error statistics in degrees.

**Naming.** The paper's "Normals (rmse)" column is the *mean* angular error: the official meter
(``NormalsMeterV1``, docs/official_implementation.md, "Evaluation") returns the mean under the key ``rmse``. Compare paper numbers
with our ``mean``; our ``rmse`` is the true root-mean-square angle (always ≥ ``mean``).

Angle: prediction L2-normalised per pixel (official ε = 1e-12 on the norm), label normalised too,
angle = 2·atan2(‖p̂ − ĝ‖, ‖p̂ + ĝ‖). This equals the official acos(clamp(⟨p̂, ĝ⟩)) but keeps full
float32 precision for small angles (acos loses ~0.03° near 0); a zero prediction gives 90° in both.
Valid pixels: label not 255 (all three channels are 255 on invalid pixels).

Median: from an 18,000-bin histogram of 0.01° bins over [0°, 180°] (a sum-reduced state of
144 kB; a ``cat`` state of every angle would be ~4 GB per rank on PASCAL val). The two middle
order statistics are located in their bins and interpolated inside them, so the median is exact
to within one bin (0.01°). The "within 11.25° / 22.5° / 30°" percentages are exact counts of
``angle < t`` (strict, as the official meter), not read from the histogram.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora.metrics._common import PERCENT, DenseMetric, apply_sample_mask, histogram, nan_where_empty
from mtlora.tasks import IGNORE_INDEX

WITHIN_DEGREES: tuple[float, ...] = (11.25, 22.5, 30.0)
BIN_WIDTH = 0.01
NUM_BINS = 18_000  # 180° / 0.01°


def angular_error(pred: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees between ``(B, 3, H, W)`` prediction and label, ``(B, H, W)`` float32."""
    # Channel-wise arithmetic on unbound planes: ``norm(dim=1)`` of an NCHW tensor is ~40x slower on CPU.
    px, py, pz = pred.float().unbind(1)
    gx, gy, gz = target.float().unbind(1)
    pn = (px * px + py * py + pz * pz).sqrt() + 1e-12
    gn = (gx * gx + gy * gy + gz * gz).sqrt() + 1e-12
    px, py, pz = px / pn, py / pn, pz / pn
    gx, gy, gz = gx / gn, gy / gn, gz / gn
    diff = ((px - gx).square() + (py - gy).square() + (pz - gz).square()).sqrt()
    total = ((px + gx).square() + (py + gy).square() + (pz + gz).square()).sqrt()
    return torch.rad2deg(2 * torch.atan2(diff, total))


def _order_statistic(hist: Tensor, ranks: Tensor) -> Tensor:
    """Estimate the values of 1-based ``ranks`` from a histogram (linear inside the bin)."""
    cum = hist.cumsum(0)
    k = torch.searchsorted(cum, ranks).clamp_max(hist.numel() - 1)  # first bin with cum >= rank
    before = cum[k] - hist[k]
    frac = (ranks - before - 0.5).double() / hist[k].clamp_min(1)
    return (k.double() + frac) * BIN_WIDTH


class NormalsMetric(DenseMetric):
    """Angular error of surface normals: ``mean``, ``median``, ``rmse`` (°) and ``within_*`` (%).

    ``update(logits, target)``: both ``(B, 3, H, W)``; the logits need not be unit length.
    ``compute()`` → ``{"mean", "median", "rmse", "within_11.25", "within_22.5", "within_30"}``,
    all NaN while no valid pixel has been seen.
    """

    higher_is_better = False

    angle_sum: Tensor
    angle_sq_sum: Tensor
    count: Tensor
    within: Tensor
    hist: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("angle_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("angle_sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("within", torch.zeros(len(WITHIN_DEGREES), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hist", torch.zeros(NUM_BINS, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        """Add a batch; ``sample_mask`` ``(B,)`` drops whole images (DDP padding duplicates)."""
        if logits.ndim != 4 or logits.shape[1] != 3 or logits.shape != target.shape:
            raise ValueError(
                f"expected logits and target of shape (B, 3, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = apply_sample_mask(target, sample_mask)
        valid = (target != IGNORE_INDEX).all(1)  # (B, H, W)
        angle = angular_error(logits, target)  # (B, H, W)
        angle64 = torch.where(valid, angle.double(), 0.0)
        self.angle_sum += angle64.sum()
        self.angle_sq_sum += angle64.square().sum()
        self.count += valid.sum()
        limits = torch.tensor(WITHIN_DEGREES, dtype=angle.dtype, device=angle.device)
        self.within += ((angle.unsqueeze(-1) < limits) & valid.unsqueeze(-1)).flatten(0, -2).sum(0)
        index = (angle / BIN_WIDTH).floor().long().clamp(0, NUM_BINS - 1)
        self.hist += histogram(torch.where(valid, index, NUM_BINS), NUM_BINS)

    def compute(self) -> dict[str, Tensor]:
        """Angular statistics over every valid pixel seen (data-set level, not per image)."""
        n = self.count
        mean = self.angle_sum / n.clamp_min(1)
        rmse = (self.angle_sq_sum / n.clamp_min(1)).sqrt()
        middle = torch.stack([(n + 1) // 2, n // 2 + 1]).clamp_min(1)  # 1-based ranks of the middle pair
        median = _order_statistic(self.hist, middle).mean()
        out = {"mean": mean, "median": median, "rmse": rmse}
        for limit, hits in zip(WITHIN_DEGREES, self.within):
            out[f"within_{limit:g}"] = hits.double() / n.clamp_min(1) * PERCENT
        return {key: nan_where_empty(value, n) for key, value in out.items()}
