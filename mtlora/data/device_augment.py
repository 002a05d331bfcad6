"""Training augmentation as batched tensor ops on the training device.

The CPU path (:class:`mtlora.data.transforms.MultiTaskTransform`) warps and resizes every
sample in the loader workers, which costs more CPU time per sample than decoding it and ships
``img_size``² float tensors between processes.  Here the work is split:

* in the loader worker, :class:`DevicePrep` only draws the sample's random parameters and
  returns the decoded arrays as compact ``H x W``-leading tensors (image and labels uint8,
  normals float16 or their 8-bit code from a prepared data set, depth float32);
  :func:`collate_padded` zero-pads the samples of a batch to a common size;
* after the batch reached the device, :class:`DeviceAugment` composes, per sample, the flip,
  the rotation/zoom about the centre and the resize to ``img_size``² into one sampling grid
  and resamples everything with one ``grid_sample`` call per kind (bicubic for image and
  normals, nearest for label maps and depth), then applies the same finishing rules as the CPU
  path: border labels, normals rotated in-plane and renormalised, depth divided by the zoom,
  images without person parts ignored, ImageNet normalisation.

The parameters are drawn exactly as the CPU path draws them from the same seed (one draw for
the pipeline, the flip, the angle, the scale), so a sample gets the same augmentation on either
path and results keep depending only on ``(seed, epoch, sample)``.  The two paths differ only
by interpolation: the CPU path interpolates twice (warp, then resize) and rounds the image to
uint8 in between, this one interpolates once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlora.data.transforms import _MIN_NORMAL_NORM, IMAGENET_MEAN, IMAGENET_STD, BorderLabel
from mtlora.tasks import IGNORE_INDEX, task_info, tasks_of_kind, validate_tasks

__all__ = ["AUGMENT_KEY", "DeviceAugment", "DevicePrep", "collate_padded"]

#: Batch key of the per-sample parameters ``(flip, angle in degrees, scale, height, width)``.
AUGMENT_KEY = "device_augment"
_LABEL_KINDS = ("segmentation", "binary")  # label maps, shipped as uint8


class DevicePrep:
    """Worker side of the device path: decoded sample -> compact tensors + drawn parameters.

    Args mirror :class:`~mtlora.data.transforms.MultiTaskTransform` (training only).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        augment: bool = True,
        flip: bool = True,
        rotation: float = 20.0,
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        scale_choices: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.tasks = validate_tasks(list(tasks))
        if rotation < 0:
            raise ValueError(f"rotation is a half-range in degrees and must be >= 0, got {rotation}")
        if scale_choices is not None and (not scale_choices or min(scale_choices) <= 0):
            raise ValueError(f"scale_choices must be positive, got {scale_choices}")
        if scale_range is not None and (scale_range[0] <= 0 or scale_range[0] > scale_range[1]):
            raise ValueError(f"scale_range must be 0 < min <= max, got {scale_range}")
        self.augment = augment
        self.flip = augment and flip
        zooms = scale_choices is not None or (scale_range is not None and tuple(scale_range) != (1.0, 1.0))
        self.warp = augment and (rotation > 0 or zooms)
        self.rotation = float(rotation)
        self.scale_range = tuple(scale_range) if scale_range is not None else (1.0, 1.0)
        self.scale_choices = tuple(scale_choices) if scale_choices is not None else None
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Restart the parameter stream from ``seed`` (same stream as the CPU transform's)."""
        self.rng = random.Random(seed)

    def draw(self) -> tuple[bool, float, float]:
        """(flip, angle, scale) in the CPU path's order of draws."""
        self.rng.random()  # the pipeline's own "apply?" draw (albumentations Compose, p=1)
        flip = self.flip and self.rng.random() < 0.5
        angle, scale = 0.0, 1.0
        if self.warp:
            angle = self.rng.uniform(-self.rotation, self.rotation)
            if self.scale_choices is not None:
                scale = self.rng.choice(self.scale_choices)
            else:
                scale = self.rng.uniform(*self.scale_range)
        return flip, angle, scale

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        missing = [task for task in self.tasks if task not in sample]
        if "image" not in sample or missing:
            raise KeyError(f"decoded sample lacks {['image'] * ('image' not in sample) + missing}")
        flip, angle, scale = self.draw()
        height, width = sample["image"].shape[:2]
        # H x W leading, no transposes: the collate copies once, the device permutes
        out = {"image": _tensor(sample["image"], np.uint8)}
        for task in self.tasks:
            value, kind = sample[task], task_info(task).kind
            if kind in _LABEL_KINDS:
                out[task] = _tensor(value, np.uint8)
            elif kind == "normals" and value.dtype == np.uint8:  # 8-bit code of a prepared data set
                out[task] = _tensor(value, np.uint8)
                out[f"{task}_zero"] = _tensor(sample[f"{task}_zero"], np.uint8)
            elif kind == "normals":
                out[task] = _tensor(value, np.float16)
            elif kind == "depth":
                out[task] = _tensor(value, np.float32)
        out[AUGMENT_KEY] = torch.tensor([float(flip), angle, scale, height, width], dtype=torch.float64)
        return out

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_padded(samples)


def _tensor(array: np.ndarray, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.require(array, dtype, ["C", "W"]))


def _normals_code_to_float(code: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    normals = code.float() * (2.0 / 255.0) - 1.0
    return normals.masked_fill(zero.bool()[..., None], 0.0)


def collate_padded(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples whose tensors are ``H x W``-leading, zero-padded to the batch's largest size."""
    metas = [sample.get("meta", {}) for sample in samples]
    for task in tasks_of_kind("normals"):
        zero_key = f"{task}_zero"
        if any(zero_key in s for s in samples) and not all(zero_key in s for s in samples):
            for sample in samples:  # mixed normals storage (8-bit code and float): all float16
                if zero_key in sample:
                    code, zero = sample.pop(task), sample.pop(zero_key)
                    sample[task] = _normals_code_to_float(code, zero).half()
    height = max(int(s["image"].shape[0]) for s in samples)
    width = max(int(s["image"].shape[1]) for s in samples)
    batch: dict[str, Any] = {AUGMENT_KEY: torch.stack([s[AUGMENT_KEY] for s in samples])}
    for key, value in samples[0].items():
        if key in ("meta", AUGMENT_KEY):
            continue
        stacked = value.new_zeros((len(samples), height, width, *value.shape[2:]))
        for row, sample in enumerate(samples):
            tensor = sample[key]
            stacked[row, : tensor.shape[0], : tensor.shape[1]] = tensor
        batch[key] = stacked
    if metas[0]:
        batch["meta"] = {key: [meta[key] for meta in metas] for key in metas[0]}
    return batch


class DeviceAugment:
    """Device side: a padded raw batch (see :class:`DevicePrep`) -> the batch convention.

    Args:
        tasks: tasks of the batch.
        img_size: side of the square output.
        border_label: "ignore" (255) or "official" (0) for label pixels created by the border;
            also selects the normals validity rule exactly as the CPU path does.
    """

    def __init__(self, tasks: Sequence[str], img_size: int, border_label: BorderLabel = "ignore") -> None:
        if border_label not in ("ignore", "official"):
            raise ValueError(f"border_label must be 'ignore' or 'official', got {border_label!r}")
        self.tasks = validate_tasks(list(tasks))
        self.img_size = int(img_size)
        self.border_fill = IGNORE_INDEX if border_label == "ignore" else 0
        self.min_normal_norm = _MIN_NORMAL_NORM if border_label == "ignore" else 0.0

    def source_coordinates(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source pixel coordinates ``(x, y)``, each ``(B, S, S)``, of every output pixel.

        Inverse of: flip, then the OpenCV rotation matrix about ``((w-1)/2, (h-1)/2)``, then the
        resize to ``S``² (pixel-centre convention: ``src = (dst + 0.5) * w / S - 0.5``).
        """
        params = params.to(torch.float64)
        flip, angle, scale, height, width = (params[:, k, None, None] for k in range(5))
        size = self.img_size
        grid = torch.arange(size, dtype=torch.float64, device=params.device) + 0.5
        xw = grid[None, None, :] * width / size - 0.5  # (B, 1, S)
        yw = grid[None, :, None] * height / size - 0.5  # (B, S, 1)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        radians = angle * (math.pi / 180)
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        x = cx + cos * (xw - cx) - sin * (yw - cy)
        y = cy + sin * (xw - cx) + cos * (yw - cy)
        x = torch.where(flip > 0.5, width - 1 - x, x)
        return x, y

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        params = batch.pop(AUGMENT_KEY)
        image = batch["image"].permute(0, 3, 1, 2)
        padded_h, padded_w = image.shape[-2:]
        x, y = self.source_coordinates(params)
        grid = torch.stack([(2 * x + 1) / padded_w - 1, (2 * y + 1) / padded_h - 1], dim=-1)
        height, width = params[:, 3, None, None], params[:, 4, None, None]
        inside = (
            (torch.round(x) >= 0)
            & (torch.round(x) <= width - 1)
            & (torch.round(y) >= 0)
            & (torch.round(y) <= height - 1)
        )
        dtype = torch.float32
        grid = grid.to(dtype)

        def resample(value: torch.Tensor, mode: str) -> torch.Tensor:
            return F.grid_sample(value.to(dtype), grid, mode=mode, padding_mode="zeros", align_corners=False)

        zero_keys = [f"{task}_zero" for task in self.tasks]
        out = {key: value for key, value in batch.items() if key not in (*self.tasks, *zero_keys)}
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=image.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, dtype=dtype, device=image.device).view(1, 3, 1, 1) * 255
        out["image"] = (resample(image, "bicubic").clamp(0, 255) - mean) / std
        for task in self.tasks:
            value, spec = batch[task], task_info(task)
            if spec.kind in _LABEL_KINDS:
                labels = resample(value[:, None], "nearest")[:, 0].round()
                labels = torch.where(inside, labels, torch.full_like(labels, self.border_fill))
                if spec.ignore_without_foreground:  # e.g. images without person parts
                    top = IGNORE_INDEX - 1 if spec.channels is None else spec.channels - 1
                    has_fg = ((labels >= 1) & (labels <= top)).flatten(1).any(dim=1)
                    labels = torch.where(has_fg[:, None, None], labels, torch.full_like(labels, IGNORE_INDEX))
                out[task] = labels.long() if spec.kind == "segmentation" else labels[:, None]
            elif spec.kind == "normals":
                if f"{task}_zero" in batch:
                    value = _normals_code_to_float(value, batch[f"{task}_zero"])
                value = value.permute(0, 3, 1, 2)
                out[task] = self._normals(resample(value, "bicubic"), params.to(dtype))
            elif spec.kind == "depth":
                depth = (
                    resample(value[:, None], "nearest")
                    * inside[:, None]
                    / params[:, 2, None, None, None].to(dtype)
                )
                out[task] = torch.where(
                    (depth > 0) & depth.isfinite(), depth, torch.full_like(depth, IGNORE_INDEX)
                )
        return out

    def _normals(self, normals: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        flip, angle = params[:, 0], params[:, 1]
        nx = torch.where(flip[:, None, None] > 0.5, -normals[:, 0], normals[:, 0])
        ny = normals[:, 1]
        radians = angle * (math.pi / 180)
        cos, sin = torch.cos(radians)[:, None, None], torch.sin(radians)[:, None, None]
        rotated = torch.stack([cos * nx + sin * ny, -sin * nx + cos * ny, normals[:, 2]], dim=1)
        norm = rotated.norm(dim=1, keepdim=True)
        valid = norm >= self.min_normal_norm if self.min_normal_norm > 0 else norm > 0
        unit = rotated / norm.clamp_min(1e-12)
        return torch.where(valid, unit, torch.full_like(unit, IGNORE_INDEX))
