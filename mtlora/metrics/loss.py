"""Data-set losses for validation/test: summed loss and labelled count per task, summed over processes.

Averaging per-batch mean losses makes the number depend on the batch size, and under DDP
(different shard sizes, unweighted mean of the per-process means) on the number of devices. Here
every task's ``(summed loss, labelled count)`` is accumulated in float64 and reduced with a sum
across processes, so ``compute()`` gives ``sum / count`` over the whole data set: the same value
on 1 or N devices, for any batch size. A task without a labelled pixel gives 0, like the
training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlora.metrics._common import DenseMetric


class LossMean(DenseMetric):
    """Per-task data-set loss from ``{task: (summed loss, labelled count)}`` updates.

    Args:
        tasks: ordered task names; ``update`` needs every one of them.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        zeros = torch.zeros(len(self.tasks), dtype=torch.float64)
        self.add_state("total", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", zeros.clone(), dist_reduce_fx="sum")

    def update(self, sums: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Add one batch's ``(summed loss, labelled count)`` of every task (no host sync)."""
        self.total += torch.stack([sums[t][0].detach().to(torch.float64) for t in self.tasks])
        self.count += torch.stack([sums[t][1].detach().to(torch.float64) for t in self.tasks])

    def compute(self) -> dict[str, Tensor]:
        """``{task: loss}`` as float32 0-dim tensors (collective under DDP)."""
        mean = (self.total / self.count.clamp_min(1)).float()
        return {t: mean[i] for i, t in enumerate(self.tasks)}
