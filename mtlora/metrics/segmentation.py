"""Semantic segmentation / human parts: mIoU over a global confusion matrix (as the official evaluation).

The official ``SemsegMeter`` accumulates TP/FP/FN per class over the whole validation set (a
global confusion matrix), excludes pixels whose label is 255, and averages
``IoU_c = TP / max(TP + FP + FN, 1e-8)`` over **all** classes. A class absent from both the
labels and the predictions therefore counts as IoU 0 and pulls the mean down. torchmetrics'
``MulticlassJaccardIndex(average="macro")`` drops such classes, so it is not used here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora.metrics._common import PERCENT, DenseMetric, apply_sample_mask, histogram, nan_where_empty


def iou_from_confmat(confmat: Tensor) -> Tensor:
    """Per-class IoU (fraction, float64) from a ``(C, C)`` confusion matrix (rows: label, columns: prediction).

    Classes with TP + FP + FN = 0 get 0, as in the official evaluator.
    """
    tp = confmat.diagonal().double()
    fp = confmat.sum(0).double() - tp
    fn = confmat.sum(1).double() - tp
    return tp / (tp + fp + fn).clamp_min(1e-8)


class SegmentationMetric(DenseMetric):
    """mIoU and pixel accuracy (percent) of ``argmax`` predictions over a global confusion matrix.

    ``update(logits, target)``: logits ``(B, C, H, W)``, target ``(B, H, W)`` int64 (``(B, 1, H, W)``
    is accepted too). Labels outside ``0..C-1`` (255 in particular) are ignored.

    ``compute()`` → ``{"mIoU", "pixel_acc"}``; both NaN while no labelled pixel has been seen (the
    official meter would print 0). :meth:`per_class_iou` gives the per-class values for reports.
    """

    higher_is_better = True

    confmat: Tensor

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        c = self.num_classes
        self.add_state("confmat", torch.zeros(c, c, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        """Add a batch; ``sample_mask`` ``(B,)`` drops whole images (DDP padding duplicates)."""
        c = self.num_classes
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if logits.ndim != 4 or logits.shape[1] != c or logits.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"expected logits (B, {c}, H, W) and target (B, H, W), got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = apply_sample_mask(target.long(), sample_mask)
        pred = logits.max(1).indices  # (B, H, W); = argmax (first maximum), 3x faster on CPU
        valid = (target >= 0) & (target < c)
        index = torch.where(valid, target * c + pred, c * c)
        self.confmat += histogram(index, c * c).view(c, c)

    def compute(self) -> dict[str, Tensor]:
        """``{"mIoU": mean IoU over all classes, "pixel_acc": correct / labelled}``, in percent."""
        total = self.confmat.sum()
        miou = iou_from_confmat(self.confmat).mean() * PERCENT
        acc = self.confmat.diagonal().sum().double() / total.clamp_min(1) * PERCENT
        return {"mIoU": nan_where_empty(miou, total), "pixel_acc": nan_where_empty(acc, total)}

    def per_class_iou(self) -> Tensor:
        """Per-class IoU in percent, ``(C,)`` float32 (0 for classes never labelled nor predicted).

        Synchronises the state across processes like ``compute()``: under DDP call it on every rank.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return (iou_from_confmat(self.confmat) * PERCENT).float()
