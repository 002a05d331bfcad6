"""Per-task losses of the official MTLoRA recipe (reference §5).

Every loss is a masked mean over the labelled pixels of the whole batch.  The normaliser is a
tensor clamped at 1, so a batch without a single labelled pixel for a task gives exactly 0
(the official NLLLoss gives NaN there), and nothing here synchronises with the host.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlora.options import check_number
from mtlora.tasks import IGNORE_INDEX, task_info


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels; ``target`` (B, H, W) int64 with 255 ignored."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (target != IGNORE_INDEX).sum().clamp_min(1)
    return total / count


def balanced_bce_loss(logits: Tensor, target: Tensor, pos_weight: float | None = None) -> Tensor:
    """Balanced binary cross-entropy with logits (saliency: batch-adaptive; edge: fixed 0.95).

    With ``pos_weight=None`` the positive weight is the fraction of negative pixels in the batch
    (official saliency loss).  The sum is divided by the number of labelled pixels; the official
    code divides by all pixels, which is the same number because it has no ignore region.
    """
    logits = logits.float()
    valid = target != IGNORE_INDEX
    labels = (target >= 0.5) & valid
    negatives = valid & ~labels
    if pos_weight is None:
        w = negatives.sum() / valid.sum().clamp_min(1)
    else:
        w = float(pos_weight)  # a Python scalar: a device tensor made from it is a blocking host->GPU copy
    # -log sigmoid(x) and -log(1 - sigmoid(x)) in a numerically stable form.
    loss_pos = F.softplus(-logits)
    loss_neg = F.softplus(logits)
    total = w * (loss_pos * labels).sum() + (1 - w) * (loss_neg * negatives).sum()
    return total / valid.sum().clamp_min(1)


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between unit-normalised prediction and label, over valid elements (official: eps 1e-12)."""
    pred = pred.float()
    pred = pred / (pred.norm(p=2, dim=1, keepdim=True) + 1e-12)
    valid = target != IGNORE_INDEX
    total = ((pred - target).abs() * valid).sum()
    return total / valid.sum().clamp_min(1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over pixels with a depth label."""
    valid = target != IGNORE_INDEX
    total = ((pred.float() - target).abs() * valid).sum()
    return total / valid.sum().clamp_min(1)


def task_loss(task: str, logits: Tensor, target: Tensor) -> Tensor:
    """Dispatch to the loss of ``task`` (its kind in :mod:`mtlora.tasks`)."""
    kind = task_info(task).kind
    if kind == "segmentation":
        return segmentation_loss(logits, target)
    if kind == "binary":
        return balanced_bce_loss(logits, target, pos_weight=0.95 if task == "edge" else None)
    if kind == "normals":
        return normals_loss(logits, target)
    return depth_loss(logits, target)


class MultiTaskLoss(nn.Module):
    """Per-task losses and their fixed weighted sum (weights default to the official ones)."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks)
        if unknown:
            raise ValueError(f"loss_weights names tasks that are not trained: {sorted(unknown)}")
        for task, weight in weights.items():  # a negative weight would train the task backwards
            check_number(f"model.loss_weights.{task}", weight, minimum=0)
        self.tasks = list(tasks)
        self.weights = {t: float(weights.get(t, task_info(t).loss_weight)) for t in self.tasks}

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``{task: loss}`` (unweighted)."""
        return {t: task_loss(t, outputs[t], batch[t]) for t in self.tasks}
