"""Helpers shared by the metrics: sync-free counting, ignore handling, the units convention.

Units, one convention for every metric of the package:

* ratios (mIoU, pixel accuracy, saliency "mIoU", F-measures, "within x°") in **percent** (×100),
  like the paper's tables;
* angles in **degrees**; depth errors in the units of the target (**metres**);
* losses raw.

A metric that has not seen a single valid pixel returns **NaN** for every value ("no data" stays
distinguishable from "all wrong"); any valid pixel anywhere makes every value finite.

Nothing here reads a tensor value on the host: shapes are Python ints, everything else is
tensor arithmetic, so ``update()`` can run inside a CUDA stream without a device synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from mtlora.tasks import IGNORE_INDEX

PERCENT = 100.0


class DenseMetric(Metric):
    """Base of the package's metrics: states and thresholds keep their dtypes under module casts.

    ``parent.to(torch.bfloat16)`` / ``.half()`` (e.g. Lightning's "16-true"/"bf16-true" precision)
    reach a metric through ``nn.Module._apply`` and would turn float64 sums and float32 threshold
    grids into 16-bit ones. :meth:`_apply` restores the declared dtypes (and the exact threshold
    values) after any such cast; device moves are unaffected.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._state_dtypes: dict[str, torch.dtype] = {}
        self._threshold_values: dict[str, tuple[float, ...]] = {}

    def add_state(
        self, name: str, default: Tensor, dist_reduce_fx: str | None = None, persistent: bool = False
    ) -> None:
        """``Metric.add_state`` for a tensor state whose dtype is then kept fixed."""
        super().add_state(name, default, dist_reduce_fx=dist_reduce_fx, persistent=persistent)
        self._state_dtypes[name] = default.dtype

    def add_thresholds(self, name: str, values: Sequence[float]) -> None:
        """Register a strictly increasing float32 threshold grid as a non-persistent buffer."""
        values = tuple(float(v) for v in values)
        if not values or any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"{name} must be a non-empty, strictly increasing sequence, got {list(values)}")
        self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        self._threshold_values[name] = values

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = "") -> DenseMetric:
        this = super()._apply(fn, exclude_state)
        for name, dtype in this._state_dtypes.items():
            if getattr(this, name).dtype != dtype:
                setattr(this, name, getattr(this, name).to(dtype))
                this._defaults[name] = this._defaults[name].to(dtype)
        for name, values in this._threshold_values.items():
            current = getattr(this, name)
            if current.dtype != torch.float32:
                setattr(this, name, torch.tensor(values, dtype=torch.float32, device=current.device))
        return this


def apply_sample_mask(target: Tensor, sample_mask: Tensor | None) -> Tensor:
    """Mark every pixel of the images whose ``sample_mask`` is False as ignored.

    Used to drop the duplicates a ``DistributedSampler`` pads the last validation shard with, so
    that DDP numbers equal single-device numbers. ``sample_mask``: ``(B,)`` bool (or 0/1).
    """
    if sample_mask is None:
        return target
    keep = sample_mask.to(device=target.device, dtype=torch.bool).reshape(-1, *([1] * (target.ndim - 1)))
    return target.masked_fill(~keep, IGNORE_INDEX)


def histogram(index: Tensor, num_bins: int) -> Tensor:
    """int64 counts of the values of ``index`` in ``[0, num_bins)``; the value ``num_bins`` is dropped.

    Callers route the pixels they want to discard to ``num_bins`` with ``torch.where`` instead of
    boolean indexing (which has a data-dependent shape). ``index_add_`` is used rather than
    ``torch.bincount``: CUDA bincount reads ``input.max()`` on the host to size its output (a
    synchronisation) and has no deterministic CUDA kernel; ``index_add_`` has neither problem.
    """
    index = index.reshape(-1)
    out = torch.zeros(num_bins + 1, dtype=torch.int64, device=index.device)
    out.index_add_(0, index, torch.ones_like(index))
    return out[:num_bins]


def threshold_bucket(values: Tensor, thresholds: Tensor) -> Tensor:
    """Number of ``thresholds`` (sorted ascending) strictly below each value, same shape as ``values``."""
    return torch.bucketize(values.contiguous(), thresholds, right=False)


def count_above(bucket: Tensor, mask: Tensor, num_thresholds: int) -> Tensor:
    """Per group, how many masked entries exceed each threshold.

    Args:
        bucket: ``(G, P)`` output of :func:`threshold_bucket` (values in ``[0, N]``).
        mask: ``(G, P)`` bool, entries to count.
        num_thresholds: N.

    Returns:
        ``(G, N)`` int64, ``[g, j]`` = number of masked entries of group g with value > threshold j.
    """
    groups = bucket.shape[0]
    width = num_thresholds + 1
    offset = torch.arange(groups, device=bucket.device).unsqueeze(1) * width
    index = torch.where(mask, bucket + offset, groups * width)
    hist = histogram(index, groups * width).view(groups, width)
    # Entries with bucket i exceed thresholds 0..i-1: count(value > thr_j) = #(bucket >= j + 1).
    at_least = hist.flip(-1).cumsum(-1).flip(-1)
    return at_least[:, 1:]


def nan_where_empty(value: Tensor, count: Tensor) -> Tensor:
    """``value`` where ``count > 0``, NaN otherwise (as float32, the dtype logged by every metric)."""
    value = value.float()
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))
