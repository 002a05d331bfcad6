"""Gradient-based task similarity and task grouping for progressive sharing plans.

For a few batches, each task's loss is differentiated with respect to the *shared* low-rank
adapter parameters of every stage; the per-task gradients are summed over the batches and
compared by cosine similarity, giving one ``T x T`` matrix per stage.  Tasks whose gradients
point the same way would pull a shared adapter in the same direction, so they are good
candidates to share a group adapter at that depth.

Grouping is average-linkage agglomerative clustering on those matrices with one constraint:
a stage's groups must refine the previous stage's (task streams branch as a tree), so merges
only happen inside a parent group.  The number of groups per stage is the user's choice (the
default: shared, shared, two groups, one per task).

Design choices (the paper gives only the abstract): gradients are taken at the model's
current weights (pretrained backbone + zero-initialised adapters, i.e. before training, which
keeps the overhead to a few forward/backward passes), summed over batches before the cosine
(a mean gradient direction rather than a mean of per-batch similarities), and the
*unweighted* task losses are used so loss weights do not bias the direction.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtlora.losses import MultiTaskLoss
from mtlora.models.lora import lora_layers
from mtlora.models.model import MultiTaskModel

if TYPE_CHECKING:
    from mtlora.visualize import InlineFigure


@dataclass
class SimilarityResult:
    tasks: list[str]
    matrices: list[Tensor]  # per stage, (T, T) cosine similarity
    batches: int
    seconds: float


def shared_adapter_params(model: MultiTaskModel) -> list[list[torch.nn.Parameter]]:
    """Shared low-rank parameters of every stage (the quantity all tasks compete for)."""
    stages: list[list[torch.nn.Parameter]] = [[] for _ in model.backbone.layers]
    for name, layer in lora_layers(model.backbone).items():
        if layer.shared_rank > 0:
            stages[int(name.split(".")[1])] += [layer.lora_shared_A, layer.lora_shared_B]
    empty = [i for i, s in enumerate(stages) if not s]
    if empty:
        raise ValueError(
            f"stages {empty} have no shared adapter parameters; use a config with task-agnostic LoRA "
            "in every stage (e.g. configs/swin_tiny_r16.yaml)"
        )
    return stages


def task_gradient_similarity(
    model: MultiTaskModel,
    batches: Iterable[dict],
    num_batches: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> SimilarityResult:
    """Cosine similarity of per-task gradients on the shared adapters, one matrix per stage.

    ``progress(done, total, seconds)`` is called after every batch (one batch is a forward and
    one backward per task, seconds each on a CPU, so a caller can show that work goes on).
    """
    model = model.to(device).train()
    criterion = MultiTaskLoss(model.tasks)
    stages = shared_adapter_params(model)
    flat_params = [p for s in stages for p in s]
    sizes = [sum(p.numel() for p in s) for s in stages]
    sums = torch.zeros(len(model.tasks), sum(sizes), device=device)
    start, seen = time.perf_counter(), 0
    for batch in itertools.islice(batches, num_batches):
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        losses = criterion(model(batch["image"]), batch)
        for t, task in enumerate(model.tasks):
            grads = torch.autograd.grad(
                losses[task], flat_params, retain_graph=t < len(model.tasks) - 1, allow_unused=True
            )
            sums[t] += torch.cat(
                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, flat_params)]
            )
        seen += 1
        if progress is not None:
            progress(seen, num_batches, time.perf_counter() - start)
    if seen == 0:
        raise ValueError("task similarity needs at least one batch; the data loader is empty")
    matrices = []
    for chunk in sums.split(sizes, dim=1):
        unit = torch.nn.functional.normalize(chunk, dim=1)
        matrices.append((unit @ unit.T).cpu())
    return SimilarityResult(list(model.tasks), matrices, seen, time.perf_counter() - start)


def constrained_average_linkage(
    similarity: Tensor, num_groups: int, parents: list[list[int]] | None = None
) -> list[list[int]]:
    """Merge clusters with the highest average similarity until ``num_groups`` remain.

    Clusters only merge inside the same parent group, so the result refines ``parents``; it
    therefore never has fewer groups than ``parents``.
    """
    n = similarity.shape[0]
    parents = parents or [list(range(n))]
    parent_of = {i: k for k, group in enumerate(parents) for i in group}
    clusters = [[i] for i in range(n)]
    num_groups = max(num_groups, len(parents))
    while len(clusters) > num_groups:
        best, pair = None, None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            if parent_of[clusters[a][0]] != parent_of[clusters[b][0]]:
                continue
            score = similarity[clusters[a]][:, clusters[b]].mean().item()
            if best is None or score > best:
                best, pair = score, (a, b)
        if pair is None:
            break
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return sorted(clusters)


def group_tasks(result: SimilarityResult, groups_per_stage: list[int]) -> list:
    """Per-stage groups for ``AdapterConfig.groups`` (``"shared"``, ``"tasks"`` or task lists)."""
    if len(groups_per_stage) != len(result.matrices):
        raise ValueError(f"groups_per_stage needs {len(result.matrices)} values, got {groups_per_stage}")
    t = len(result.tasks)
    out, parents = [], None
    for k, matrix in zip(groups_per_stage, result.matrices):
        if not 1 <= k <= t:
            raise ValueError(f"groups_per_stage values must be in 1..{t}, got {k}")
        clusters = constrained_average_linkage(matrix, k, parents)
        parents = clusters
        if len(clusters) == 1:
            out.append("shared")
        elif len(clusters) == t:
            out.append("tasks")
        else:
            out.append([[result.tasks[i] for i in c] for c in clusters])
    return out


def plot_heatmaps(result: SimilarityResult, path: str | None = None) -> InlineFigure:
    """One heat map per stage, annotated with the cosine values; saved to ``path`` when given.

    Returns the figure (an :class:`~mtlora.visualize.InlineFigure`, shown inline in Jupyter).
    Drawn with matplotlib's object API: no backend switch, no pyplot state.
    """
    from mtlora.visualize import InlineFigure

    n = len(result.matrices)
    fig = InlineFigure(figsize=(3.4 * n, 3.4), layout="tight")
    axes = fig.subplots(1, n, squeeze=False)
    for i, (ax, m) in enumerate(zip(axes[0], result.matrices)):
        ax.imshow(m.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"stage {i}")
        ax.set_xticks(range(len(result.tasks)), result.tasks, rotation=60, fontsize=7)
        ax.set_yticks(range(len(result.tasks)), result.tasks, fontsize=7)
        for r, c in itertools.product(range(m.shape[0]), range(m.shape[1])):
            ax.text(c, r, f"{float(m[r, c]):.2f}", ha="center", va="center", fontsize=6)
    fig.suptitle(f"task gradient cosine similarity ({result.batches} batches)")
    if path is not None:
        from mtlora.io.atomic import write_atomic

        write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return fig
