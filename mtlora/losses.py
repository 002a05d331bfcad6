"""Per-task losses of the official MTLoRA recipe (docs/official_implementation.md, "Losses").

Every loss is a masked mean over the labelled pixels of the whole batch.  The normaliser is a
tensor clamped at 1, so a batch without a single labelled pixel for a task gives exactly 0
(the official NLLLoss gives NaN there), and nothing here synchronises with the host.  The
``*_sum`` functions return the masked sum and its count instead, which validation adds up over
a whole data set (:meth:`MultiTaskLoss.sums`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora.options import check_number
from mtlora.tasks import IGNORE_INDEX, task_info


def _masked_mean(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, 0 when nothing is labelled (``count`` 0), without a host sync."""
    return total / count.clamp_min(1)


def segmentation_loss_sum(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(summed cross-entropy, labelled pixels)``; ``target`` (B, H, W) int64 with 255 ignored."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (target != IGNORE_INDEX).sum()


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels; ``target`` (B, H, W) int64 with 255 ignored."""
    return _masked_mean(*segmentation_loss_sum(logits, target))


def balanced_bce_loss_sum(
    logits: Tensor, target: Tensor, pos_weight: float | None = None, per_image: bool = False
) -> tuple[Tensor, Tensor]:
    """``(summed balanced BCE, labelled pixels)``, see :func:`balanced_bce_loss`.

    ``per_image=True`` takes the adaptive positive weight (``pos_weight=None``) of every image on
    its own instead of the whole batch, so that sums over a data set do not depend on how it was
    batched (validation losses).
    """
    logits = logits.float()
    valid = target != IGNORE_INDEX
    labels = (target >= 0.5) & valid
    negatives = valid & ~labels
    # -log sigmoid(x) and -log(1 - sigmoid(x)) in a numerically stable form, summed per image
    loss_pos = (F.softplus(-logits) * labels).flatten(1).sum(1)
    loss_neg = (F.softplus(logits) * negatives).flatten(1).sum(1)
    count = valid.flatten(1).sum(1)
    if pos_weight is not None:
        w: Tensor | float = float(pos_weight)  # a device tensor made from it is a blocking host->GPU copy
    elif per_image:
        w = negatives.flatten(1).sum(1) / count.clamp_min(1)
    else:
        w = negatives.sum() / count.sum().clamp_min(1)
    return (w * loss_pos + (1 - w) * loss_neg).sum(), count.sum()


def balanced_bce_loss(logits: Tensor, target: Tensor, pos_weight: float | None = None) -> Tensor:
    """Balanced binary cross-entropy with logits (saliency: batch-adaptive; edge: fixed 0.95).

    With ``pos_weight=None`` the positive weight is the fraction of negative pixels in the batch
    (official saliency loss).  The sum is divided by the number of labelled pixels; the official
    code divides by all pixels, which is the same number because it has no ignore region.
    """
    return _masked_mean(*balanced_bce_loss_sum(logits, target, pos_weight))


def normals_loss_sum(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(summed L1 of the unit-normalised prediction, valid elements)``, see :func:`normals_loss`."""
    pred = pred.float()
    pred = pred / (pred.norm(p=2, dim=1, keepdim=True) + 1e-12)
    valid = target != IGNORE_INDEX
    return ((pred - target).abs() * valid).sum(), valid.sum()


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between unit-normalised prediction and label, over valid elements (official: eps 1e-12)."""
    return _masked_mean(*normals_loss_sum(pred, target))


def depth_loss_sum(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(summed L1, pixels with a depth label)``."""
    valid = target != IGNORE_INDEX
    return ((pred.float() - target).abs() * valid).sum(), valid.sum()


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 over pixels with a depth label."""
    return _masked_mean(*depth_loss_sum(pred, target))


_KIND_LOSSES = {
    "segmentation": lambda logits, target, per_image: segmentation_loss_sum(logits, target),
    "binary": lambda logits, target, per_image: balanced_bce_loss_sum(logits, target, None, per_image),
    "normals": lambda logits, target, per_image: normals_loss_sum(logits, target),
    "depth": lambda logits, target, per_image: depth_loss_sum(logits, target),
}
"""Default loss of each task kind, ``(logits, target, per_image) -> (sum, count)``."""


def task_loss_sum(
    task: str, logits: Tensor, target: Tensor, per_image: bool = False
) -> tuple[Tensor, Tensor]:
    """``(summed loss, labelled count)`` of ``task``; the loss is their ratio (0 when nothing is labelled).

    The task's own loss (:attr:`~mtlora.tasks.TaskSpec.loss`, e.g. edge's fixed positive weight)
    or else its kind's.  Summing both over batches and processes gives the data set's loss
    whatever the batching; ``per_image`` only matters for the batch-adaptive weight of binary
    tasks (see :func:`balanced_bce_loss_sum`).
    """
    spec = task_info(task)
    loss = spec.loss if spec.loss is not None else _KIND_LOSSES[spec.kind]
    return loss(logits, target, per_image)


def task_loss(task: str, logits: Tensor, target: Tensor) -> Tensor:
    """Dispatch to the loss of ``task`` (its kind in :mod:`mtlora.tasks`)."""
    return _masked_mean(*task_loss_sum(task, logits, target))


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

    def sums(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{task: (summed loss, labelled count)}`` with per-image saliency weights, for evaluation.

        Accumulated over a whole validation set (and all processes), ``sum / count`` is the
        set's loss independent of batch size and device count.
        """
        return {t: task_loss_sum(t, outputs[t], batch[t], per_image=True) for t in self.tasks}

    def labelled(self, batch: dict[str, Tensor]) -> Tensor:
        """Labelled elements of every task in ``batch``, ``(T,)`` int64 on the labels' device."""
        return torch.stack([(batch[t] != IGNORE_INDEX).sum() for t in self.tasks])
