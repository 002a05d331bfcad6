"""Task registry: what every dense task is, independent of the data set.

Batch convention (every DataModule produces it, every loss/metric consumes it):

* ``batch["image"]``: ``(B, 3, H, W)`` float32, ImageNet-normalised.
* ``batch[task]`` for each task, with :data:`IGNORE_INDEX` (255) marking pixels without a label:

  ============  =====================  ==========================================
  task          target                 values
  ============  =====================  ==========================================
  semseg        ``(B, H, W)`` int64    class ids ``0..C-1``
  human_parts   ``(B, H, W)`` int64    ``0`` background, ``1..6`` parts
  sal           ``(B, 1, H, W)`` f32   ``{0, 1}``
  edge          ``(B, 1, H, W)`` f32   ``{0, 1}``
  normals       ``(B, 3, H, W)`` f32   unit vectors, all three channels 255 if invalid
  depth         ``(B, 1, H, W)`` f32   metres
  ============  =====================  ==========================================

* ``batch["meta"]`` (optional): dict of lists, e.g. ``{"id": [...], "size": [...]}``.

Model outputs are ``{task: logits (B, C_t, H, W)}`` at the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = 255

TaskKind = Literal["segmentation", "binary", "normals", "depth"]


@dataclass(frozen=True)
class TaskInfo:
    """Static facts about one task; the number of classes comes from the data set."""

    name: str
    kind: TaskKind
    loss_weight: float
    """Default weight in the total loss (official MTLoRA main.py values)."""
    channels: int | None
    """Output channels, or None when the data set decides (class count)."""
    higher_is_better: bool
    """Direction of the task's headline metric (for Δm)."""


TASKS: dict[str, TaskInfo] = {
    "semseg": TaskInfo("semseg", "segmentation", 1.0, None, True),
    "human_parts": TaskInfo("human_parts", "segmentation", 2.0, 7, True),
    "sal": TaskInfo("sal", "binary", 5.0, 1, True),
    "normals": TaskInfo("normals", "normals", 10.0, 3, False),
    "edge": TaskInfo("edge", "binary", 50.0, 1, True),
    "depth": TaskInfo("depth", "depth", 1.0, 1, False),
}


def task_info(name: str) -> TaskInfo:
    """Look a task up, failing with the list of known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


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
