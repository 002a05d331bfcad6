"""Per-task metric collections and the multi-task evaluator used by the LightningModule.

Names: the evaluator's ``compute()`` returns ``{"<task>/<metric>": scalar tensor}`` (e.g.
``semseg/mIoU``, ``normals/mean``, ``sal/maxF``, ``edge/odsF``); the LightningModule adds the stage
prefix (``val/``, ``test/``). Metric names per task kind:

=================  =============================================================================
semseg, parts      ``mIoU``, ``pixel_acc``
sal                ``mIoU`` (paper column), ``maxF``
normals            ``mean`` (paper's "rmse" column), ``median``, ``rmse``, ``within_11.25``,
                   ``within_22.5``, ``within_30``
depth              ``rmse``, ``log_rmse``
edge               ``loss``, ``odsF``
=================  =============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from mtlora.metrics.depth import DepthMetric
from mtlora.metrics.normals import NormalsMetric
from mtlora.metrics.saliency import SaliencyMetric
from mtlora.metrics.segmentation import SegmentationMetric
from mtlora.tasks import task_info, validate_tasks

METRIC_DIRECTIONS: dict[str, bool] = {
    "mIoU": True,
    "pixel_acc": True,
    "maxF": True,
    "mean": False,
    "median": False,
    "rmse": False,
    "log_rmse": False,
    "within_11.25": True,
    "within_22.5": True,
    "within_30": True,
    "loss": False,
    "odsF": True,
}
"""Metric name → higher is better, for every name this package produces."""


def headline_metric(task: str) -> tuple[str, bool]:
    """The metric Δm uses for ``task`` and whether higher is better, e.g. ``("mean", False)``."""
    spec = task_info(task)  # unknown task → error listing the known ones
    return spec.headline_metric, spec.higher_is_better


def headline_key(task: str) -> str:
    """``"<task>/<headline metric>"``, the key of ``task`` in evaluator outputs and baselines."""
    return f"{task}/{headline_metric(task)[0]}"


_KIND_METRICS: dict[str, Callable[..., dict[str, Metric]]] = {
    "segmentation": lambda num_classes, **_: {"segmentation": SegmentationMetric(num_classes)},
    "binary": lambda num_classes, **_: {"binary": SaliencyMetric()},
    "normals": lambda num_classes, **_: {"normals": NormalsMetric()},
    "depth": lambda num_classes, **_: {"depth": DepthMetric()},
}
"""Default metrics of each task kind (a task's :attr:`~mtlora.tasks.TaskSpec.metrics` overrides them)."""


def build_task_metrics(
    task: str,
    num_classes: int | None = None,
    *,
    edge_max_dist: float = 0.0075,
    edge_num_thresholds: int = 99,
    edge_exact: bool = False,
) -> MetricCollection:
    """The metrics of one task as a collection whose ``compute()`` keys are ``<task>/<metric>``.

    Args:
        task: a task name of :mod:`mtlora.tasks`.
        num_classes: classes of a segmentation task (semseg: 21 PASCAL, 40 NYUD); human_parts
            defaults to 7; ignored by the other tasks.
        edge_max_dist: edge matching tolerance as a fraction of the image diagonal (0.011 for NYUD).
        edge_num_thresholds: thresholds of the edge ODS search.
        edge_exact: also score edges by the BSDS/SEISM protocol (``odsF_bsds``, ``oisF_bsds``;
            comparable with published tables, slow: :mod:`mtlora.metrics.edge_bsds`).
    """
    spec = task_info(task)
    options = {
        "edge_max_dist": edge_max_dist,
        "edge_num_thresholds": edge_num_thresholds,
        "edge_exact": edge_exact,
    }
    classes = num_classes if num_classes is not None else spec.channels
    if classes is None and spec.kind == "segmentation":
        raise ValueError(f"task {task!r} needs num_classes (the data set decides it)")
    factory = spec.metrics if spec.metrics is not None else _KIND_METRICS[spec.kind]
    metrics = factory(classes, **options)
    return MetricCollection(metrics, prefix=f"{task}/", compute_groups=False)


class MultiTaskEvaluator(nn.Module):
    """One metric collection per task; ``update`` on every validation batch, ``compute`` per epoch.

    States live in an ``nn.ModuleDict`` and follow the module's device. ``update`` never
    synchronises with the host. ``compute`` and :meth:`per_class_iou` gather states across
    processes: under DDP call them on every rank. To make DDP numbers equal single-device numbers,
    pass ``sample_mask`` (``(B,)`` bool, False for the duplicates a ``DistributedSampler`` pads the
    last shard with).

    Args:
        tasks: ordered task names.
        num_classes: task → class count for segmentation tasks (``semseg`` is required).
        edge_max_dist: edge tolerance as a fraction of the image diagonal (PASCAL 0.0075, NYUD 0.011).
        edge_num_thresholds: thresholds of the edge ODS search.
        edge_exact: also score edges by the BSDS/SEISM protocol (see :func:`build_task_metrics`).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: Mapping[str, int] | None = None,
        *,
        edge_max_dist: float = 0.0075,
        edge_num_thresholds: int = 99,
        edge_exact: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = validate_tasks(tasks)
        num_classes = dict(num_classes or {})
        self.metrics = nn.ModuleDict(
            {
                t: build_task_metrics(
                    t,
                    num_classes.get(t),
                    edge_max_dist=edge_max_dist,
                    edge_num_thresholds=edge_num_thresholds,
                    edge_exact=edge_exact,
                )
                for t in self.tasks
            }
        )

    def update(
        self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor], sample_mask: Tensor | None = None
    ) -> None:
        """Accumulate ``outputs[task]`` (logits) against ``batch[task]`` for every task."""
        for task in self.tasks:
            self.metrics[task].update(outputs[task], batch[task], sample_mask=sample_mask)

    def compute(self) -> dict[str, Tensor]:
        """Flat ``{"<task>/<metric>": 0-dim tensor}`` over all tasks (collective under DDP)."""
        results: dict[str, Tensor] = {}
        for task in self.tasks:
            results.update(self.metrics[task].compute())
        return results

    def reset(self) -> None:
        """Clear every state (call after logging the epoch's results)."""
        for task in self.tasks:
            self.metrics[task].reset()

    def per_class_iou(self, task: str) -> Tensor:
        """Per-class IoU in percent of a segmentation task, ``(C,)`` (collective under DDP)."""
        if task not in self.metrics or task_info(task).kind != "segmentation":
            raise ValueError(
                f"per-class IoU needs a trained segmentation task, got {task!r} (tasks: {self.tasks})"
            )
        collection = self.metrics[task]
        return collection["segmentation"].per_class_iou()
