"""Task registry: what every dense task is, independent of the data set, in one place.

Each task is a :class:`TaskSpec`: its *kind*, output channels, default loss weight, headline
metric and its direction (for Δm), and optionally its own loss, metrics, class names and how
the synthetic data set derives its label.  Everything else in the package (losses, metrics,
Δm, both augmentation paths, prepared data sets, prediction panels and files, W&B images)
looks tasks up here and otherwise acts on the kind, so adding a task of an existing kind is one
:func:`register_task` call, e.g. a binary person mask on the synthetic scenes::

    register_task(TaskSpec("person", "binary", 3.0, 1, True,
                           synthetic=lambda scene: (scene["human_parts"] % 255 > 0).astype("uint8")))

Batch convention (every DataModule produces it, every loss/metric consumes it):

* ``batch["image"]``: ``(B, 3, H, W)`` float32, ImageNet-normalised.
* ``batch[task]`` for each task, with :data:`IGNORE_INDEX` (255) marking pixels without a label,
  laid out by the task's kind:

  ============  ============  =====================  ======================================
  kind          tasks         target                 values
  ============  ============  =====================  ======================================
  segmentation  semseg,       ``(B, H, W)`` int64    class ids ``0..C-1`` (human_parts:
                human_parts                          ``0`` background, ``1..6`` parts)
  binary        sal, edge     ``(B, 1, H, W)`` f32   ``{0, 1}``
  normals       normals       ``(B, 3, H, W)`` f32   unit vectors, all three channels 255 if
                                                     invalid
  depth         depth         ``(B, 1, H, W)`` f32   metres
  ============  ============  =====================  ======================================

* ``batch["meta"]`` (optional): dict of lists, e.g. ``{"id": [...], "size": [...]}``.

Model outputs are ``{task: logits (B, C_t, H, W)}`` at the input resolution.

Per kind: segmentation is trained with cross-entropy and scored by mIoU/pixel accuracy, binary
with balanced BCE (positive weight adaptive to the batch unless the task sets its own loss) and
mIoU/maxF, normals with the L1 of the unit-normalised prediction and angle errors (flips negate
x, warps rotate the vectors in-plane), depth with L1 and RMSE (zooms divide it).  Data-set
readers (PASCAL-Context, NYUD) name the tasks their files hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor
    from torchmetrics import Metric

IGNORE_INDEX = 255

TaskKind = Literal["segmentation", "binary", "normals", "depth"]
"""How a task's target is stored, augmented, scored and drawn (see the table above)."""

LossSum = Callable[["Tensor", "Tensor", bool], tuple["Tensor", "Tensor"]]
"""``(logits, target, per_image) -> (summed loss, labelled count)``, see :mod:`mtlora.losses`."""

MetricsFactory = Callable[..., "dict[str, Metric]"]
"""``(num_classes, *, edge_max_dist, edge_num_thresholds, edge_exact) -> {name: Metric}``."""

SyntheticLabel = Callable[["Mapping[str, np.ndarray]"], "np.ndarray"]
"""A rendered synthetic scene (image and the built-in tasks' decoded labels) -> this task's label."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything the package knows about one task, in one place.

    Losses, metrics, Δm, transforms, panels, predictions, synthetic data and W&B images look
    tasks up here and otherwise act on the task's ``kind``, so a new task of an existing kind
    needs nothing but a :func:`register_task` call.
    """

    name: str
    kind: TaskKind
    loss_weight: float
    """Default weight in the total loss (official MTLoRA main.py values)."""
    channels: int | None
    """Output channels, or None when the data set decides (class count)."""
    higher_is_better: bool
    """Direction of the task's headline metric (for Δm)."""
    headline: str | None = None
    """Metric Δm uses (a name of the task's metrics); None: the kind's (see :data:`KIND_HEADLINES`)."""
    loss: LossSum | None = None
    """Loss of the task; None: the kind's default in :mod:`mtlora.losses`."""
    metrics: MetricsFactory | None = None
    """Metrics of the task; None: the kind's default in :mod:`mtlora.metrics.collection`."""
    class_names: tuple[str, ...] | None = None
    """Names of a segmentation task's classes for legends (None: ``class k``)."""
    ignore_without_foreground: bool = False
    """Segmentation: an image without any class ``1..channels-1`` is ignored, not background."""
    synthetic: SyntheticLabel | None = None
    """How the synthetic data set derives this task's label (built-in tasks are rendered)."""

    @property
    def regression(self) -> bool:
        """Whether the task regresses continuous values (normals, depth) rather than classifying."""
        return self.kind in ("normals", "depth")

    @property
    def headline_metric(self) -> str:
        """The metric Δm uses for this task."""
        return self.headline if self.headline is not None else KIND_HEADLINES[self.kind]


KIND_HEADLINES: dict[str, str] = {
    "segmentation": "mIoU",
    "binary": "mIoU",
    "normals": "mean",
    "depth": "rmse",
}
"""Default headline metric of each kind (the choices of the official Δm code)."""


def _edge_loss(logits: Tensor, target: Tensor, per_image: bool = False) -> tuple[Tensor, Tensor]:
    """Balanced BCE with the fixed positive weight 0.95 of the official edge loss."""
    from mtlora.losses import balanced_bce_loss_sum

    return balanced_bce_loss_sum(logits, target, 0.95, per_image)


def _edge_metrics(
    num_classes: int | None = None,
    *,
    edge_max_dist: float = 0.0075,
    edge_num_thresholds: int = 99,
    edge_exact: bool = False,
    **_: Any,
) -> dict[str, Metric]:
    """Loss and ODS F of the edge maps; with ``edge_exact`` also the slow BSDS/SEISM protocol."""
    from mtlora.metrics.edge import EdgeMetric

    metrics: dict[str, Metric] = {
        "binary": EdgeMetric(max_dist=edge_max_dist, num_thresholds=edge_num_thresholds)
    }
    if edge_exact:
        from mtlora.metrics.edge_bsds import BSDSEdgeMetric

        metrics["bsds"] = BSDSEdgeMetric(max_dist=edge_max_dist, num_thresholds=edge_num_thresholds)
    return metrics


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
PART_CLASSES = ("background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg")

TASKS: dict[str, TaskSpec] = {}
"""The registry, in registration order (the order of reports); add tasks with :func:`register_task`."""


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry so every option, loss, metric and panel knows the task.

    A task's name becomes a batch key, an output folder and the ``<task>/`` prefix of metric
    names, so it must be a Python identifier; ``replace=True`` redefines an existing task.
    Register at import time of a module the whole run imports: data loader workers started
    with ``spawn`` (and checkpoints loaded later) only know the tasks registered on import.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    if not spec.name.isidentifier():
        raise ValueError(f"task name must be an identifier (letters, digits, _), got {spec.name!r}")
    if spec.kind not in get_args(TaskKind):
        raise ValueError(f"task {spec.name!r}: kind must be one of {get_args(TaskKind)}, got {spec.kind!r}")
    if spec.channels is not None and spec.channels < 1:
        raise ValueError(f"task {spec.name!r}: channels must be >= 1 or None, got {spec.channels}")
    if spec.name in TASKS and not replace:
        raise ValueError(f"task {spec.name!r} is already registered (pass replace=True to redefine it)")
    TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove a registered task (plug-ins and tests that add one temporarily)."""
    task_info(name)
    del TASKS[name]


for _spec in (
    TaskSpec("semseg", "segmentation", 1.0, None, True, class_names=VOC_CLASSES),
    TaskSpec(
        "human_parts", "segmentation", 2.0, 7, True, class_names=PART_CLASSES, ignore_without_foreground=True
    ),
    TaskSpec("sal", "binary", 5.0, 1, True),
    TaskSpec("normals", "normals", 10.0, 3, False),
    TaskSpec("edge", "binary", 50.0, 1, True, headline="odsF", loss=_edge_loss, metrics=_edge_metrics),
    TaskSpec("depth", "depth", 1.0, 1, False),
):
    register_task(_spec)
del _spec


def task_info(name: str) -> TaskSpec:
    """Look a task up, failing with the list of known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def tasks_of_kind(kind: str) -> tuple[str, ...]:
    """Registered tasks of ``kind``, e.g. every task whose targets are normal vectors."""
    return tuple(name for name, spec in TASKS.items() if spec.kind == kind)


def validate_tasks(tasks: list[str] | tuple[str, ...], option: str = "tasks") -> list[str]:
    """Check a task list (non-empty, known names, no duplicates) and return it as a list."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError(f"{option}: at least one task is required; known tasks: {', '.join(TASKS)}")
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"{option}: unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"{option}: duplicate task names in {tasks}")
    return tasks
