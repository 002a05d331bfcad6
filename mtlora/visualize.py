"""Prediction panels: input, each task's prediction and, when known, its ground truth.

Pure functions from numpy arrays to a matplotlib figure / PNG file, so notebooks, the W&B
callback and ``mtlora predict`` draw the same pictures.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from mtlora.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mtlora.tasks import IGNORE_INDEX, task_info

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
PART_CLASSES = ["background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg"]


def class_names(task: str, num_classes: int) -> list[str]:
    if task == "human_parts":
        return PART_CLASSES[:num_classes]
    if task == "semseg" and num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return [f"class {k}" for k in range(num_classes)]


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), ``(C, 3)`` uint8; 255 = ignore -> white."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        c, r, g, b = k, 0, 0, 0
        for shift in range(8):
            r |= ((c >> 0) & 1) << (7 - shift)
            g |= ((c >> 1) & 1) << (7 - shift)
            b |= ((c >> 2) & 1) << (7 - shift)
            c >>= 3
        colours[k] = (r, g, b)
    return colours


def denormalise(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` ImageNet-normalised tensor -> ``(H, W, 3)`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def decode_prediction(task: str, logits: Tensor) -> np.ndarray:
    """Logits ``(C, H, W)`` -> a map to draw: class ids, probabilities, unit normals or depth."""
    kind = task_info(task).kind
    logits = logits.detach().float().cpu()
    if kind == "segmentation":
        return logits.argmax(0).numpy()
    if kind == "binary":
        return torch.sigmoid(logits[0]).numpy()
    if kind == "normals":
        return torch.nn.functional.normalize(logits, dim=0).permute(1, 2, 0).numpy()
    return logits[0].numpy()


def decode_target(task: str, target: Tensor) -> np.ndarray:
    """A batch-convention target (no batch dim) -> the same kind of map as the prediction."""
    target = target.detach().float().cpu()
    kind = task_info(task).kind
    if kind == "segmentation":
        return target.numpy().astype(np.int64)
    if kind == "normals":
        return target.permute(1, 2, 0).numpy()
    return target[0].numpy()


def render(task: str, value: np.ndarray, num_classes: int = 1) -> np.ndarray:
    """A decoded map -> ``(H, W, 3)`` uint8 picture (ignored pixels white)."""
    kind = task_info(task).kind
    if kind == "segmentation":
        colours = palette(max(num_classes, int(value[value != IGNORE_INDEX].max(initial=0)) + 1))
        out = np.full(value.shape + (3,), 255, dtype=np.uint8)
        valid = value != IGNORE_INDEX
        out[valid] = colours[value[valid]]
        return out
    if kind == "normals":
        invalid = (value == IGNORE_INDEX).all(-1)
        out = ((np.clip(value, -1, 1) + 1) * 127.5).astype(np.uint8)
        out[invalid] = 255
        return out
    import matplotlib

    cmap = matplotlib.colormaps["magma" if kind == "binary" else "viridis"]
    invalid = value == IGNORE_INDEX
    valid_values = value[~invalid]
    lo, hi = (
        (0.0, 1.0)
        if kind == "binary"
        else ((float(valid_values.min()), float(valid_values.max())) if valid_values.size else (0.0, 1.0))
    )
    scaled = np.clip((value - lo) / max(hi - lo, 1e-6), 0, 1)
    out = (cmap(scaled)[..., :3] * 255).astype(np.uint8)
    out[invalid] = 255
    return out


def prediction_panel(
    image: Tensor,
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    title: str = "",
):
    """A figure: input on the left, one column per task, predictions on top, ground truth below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tasks = list(predictions)
    rows = 2 if targets else 1
    fig, axes = plt.subplots(
        rows, len(tasks) + 1, figsize=(2.6 * (len(tasks) + 1), 2.8 * rows + 0.6), squeeze=False
    )
    axes[0][0].imshow(denormalise(image))
    axes[0][0].set_title("input", fontsize=9)
    for r in range(rows):
        axes[r][0].axis("off")
    for col, task in enumerate(tasks, start=1):
        logits = predictions[task]
        n = logits.shape[0]
        pred = decode_prediction(task, logits)
        axes[0][col].imshow(render(task, pred, n))
        axes[0][col].set_title(f"{task} (pred)", fontsize=9)
        if targets and task in targets:
            gt = decode_target(task, targets[task])
            axes[1][col].imshow(render(task, gt, n))
            axes[1][col].set_title(f"{task} (gt)", fontsize=9)
        if task_info(task).kind == "segmentation":
            shown = np.unique(pred)
            colours = palette(n)
            names = class_names(task, n)
            handles = [Patch(color=colours[k] / 255, label=names[k]) for k in shown if k < n][:8]
            axes[0][col].legend(handles=handles, fontsize=5, loc="lower left", framealpha=0.6)
        for r in range(rows):
            axes[r][col].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_panel(
    path: str,
    image: Tensor,
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    title: str = "",
) -> None:
    import matplotlib.pyplot as plt

    from mtlora.io.atomic import write_atomic

    fig = prediction_panel(image, predictions, targets, title)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
