"""Training and evaluation transforms for multi-task samples (albumentations based).

Input: a *decoded sample*, numpy arrays at the original resolution, produced by the readers:

=============  ==========================  =============================================
key            array                       values
=============  ==========================  =============================================
image          ``(H, W, 3)`` uint8 RGB      0..255
semseg         ``(H, W)`` uint8            class ids, 255 = ignore
human_parts    ``(H, W)`` uint8            0 background, 1..6 parts, 255 = ignore
sal, edge      ``(H, W)`` uint8            {0, 1}
normals        ``(H, W, 3)`` float32        unit vectors, (0, 0, 0) = invalid
depth          ``(H, W)`` float32           metres, 0 = invalid
=============  ==========================  =============================================

Output: the per-sample tensors of the batch convention in :mod:`mtlora.tasks` (no batch dim).

Normals convention (the NYU one, also used by the PASCAL distilled normals): channel 0 points
right, channel 1 points *down* (image rows), channel 2 towards the camera.  In this frame an
in-plane vector transforms exactly like a pixel displacement, so a warp with linear part ``L``
rotates ``(n_x, n_y)`` by ``L / scale``; a horizontal flip negates ``n_x``.

Official protocol (docs/official_implementation.md, "Data"), reproduced by default: flip p=0.5 -> one affine warp about
the centre (rotation U(-20, 20) degrees, isotropic scale U(0.75, 1.25), output size unchanged)
-> resize to ``img_size``² without keeping the aspect ratio -> ignore regions -> ImageNet
normalisation.  Image and normals use cubic, labels nearest interpolation.  Deliberate
differences, each with the switch that restores the official behaviour:

* Pixels created by the rotation/zoom-out border are *ignored* (255) for every label; the
  official code labels them 0 (background / not salient / no edge): ``border_label="official"``.
* Interpolated normals whose norm is below 0.5 (a neighbourhood that is mostly invalid, or
  cubic ringing that can point the vector backwards) are ignored; the official code only
  ignores an exact zero.  ``border_label="official"`` restores the exact-zero rule.
* The image stays uint8 through the warps, so OpenCV saturates cubic overshoots at 0/255
  (and float inputs are clipped); the official ToTensor casts floats to uint8 and wraps
  around (-1.3 -> 255) in the official code.  No switch: that is a plain bug.
* The warp centre is the true pixel centre ``((w - 1) / 2, (h - 1) / 2)``, not ``(w / 2, h / 2)``.
* Depth is warped with nearest interpolation (cubic would invent depths between a surface and
  an invalid 0 pixel) and divided by the zoom factor, as the official NYUD pipeline does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch

from mtlora.tasks import IGNORE_INDEX, task_info, tasks_of_kind, validate_tasks

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentOn",
    "BorderLabel",
    "EvalResolution",
    "HorizontalFlipNormals",
    "MultiTaskTransform",
    "ScaleRotate",
]

log = logging.getLogger(__name__)

BorderLabel = Literal["ignore", "official"]
AugmentOn = Literal["device", "cpu"]
EvalResolution = Literal["resized", "original"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MIN_NORMAL_NORM = 0.5


def _additional_targets(tasks: Sequence[str]) -> dict[str, str]:
    """How each target travels through albumentations: normals are resampled like an image
    (cubic, fill 0 = invalid), labels and depth like masks (nearest, fill = border label)."""
    return {task: "image" if task_info(task).kind == "normals" else "mask" for task in tasks}


class HorizontalFlipNormals(A.HorizontalFlip):
    """Horizontal flip that also negates the x component of every normals-kind target."""

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = super().apply_with_params(params, *args, **kwargs)
        for task in tasks_of_kind("normals"):
            normals = out.get(task)
            if normals is not None:
                out[task] = normals * np.array([-1.0, 1.0, 1.0], dtype=normals.dtype)
        return out


class ScaleRotate(A.DualTransform):
    """One affine warp about the image centre: rotation plus isotropic zoom, same output size.

    The angle is drawn uniformly from ``rotation_range`` (degrees, counter-clockwise on screen,
    OpenCV convention); the scale uniformly from ``scale_range`` or from ``scale_choices``.
    Normals-kind targets (if present) are rotated in-plane by the same angle, depth-kind ones
    are divided by the scale (zooming in by s brings the scene s times closer) and its new border is 0 (invalid).

    Args:
        rotation_range: (min, max) angle in degrees.
        scale_range: (min, max) zoom factor, used when ``scale_choices`` is None.
        scale_choices: discrete zoom factors drawn with equal probability.
        fill_mask: label value of pixels created by the border (255 ignore, or 0 official).
        p: probability of applying the warp.
    """

    def __init__(
        self,
        rotation_range: tuple[float, float] = (-20.0, 20.0),
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        scale_choices: Sequence[float] | None = None,
        fill_mask: float = IGNORE_INDEX,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if scale_choices is None and scale_range is None:
            raise ValueError("ScaleRotate: give scale_range or scale_choices")
        if scale_choices is not None and (not scale_choices or min(scale_choices) <= 0):
            raise ValueError(f"ScaleRotate: scale_choices must be positive, got {scale_choices}")
        if scale_range is not None and (scale_range[0] <= 0 or scale_range[0] > scale_range[1]):
            raise ValueError(f"ScaleRotate: scale_range must be 0 < min <= max, got {scale_range}")
        self.rotation_range = (float(rotation_range[0]), float(rotation_range[1]))
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.scale_choices = None if scale_choices is None else tuple(float(s) for s in scale_choices)
        self.fill_mask = fill_mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("rotation_range", "scale_range", "scale_choices", "fill_mask")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        angle = self.py_random.uniform(*self.rotation_range)
        if self.scale_choices is not None:
            scale = self.py_random.choice(self.scale_choices)
        else:
            scale = self.py_random.uniform(*self.scale_range)
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)  # (2, 3), maps source -> output pixels
        return {"matrix": matrix, "angle": angle, "scale": scale, "dsize": (width, height)}

    @staticmethod
    def _warp(
        array: np.ndarray, matrix: np.ndarray, dsize: tuple[int, int], flags: int, fill: float
    ) -> np.ndarray:
        channels = 1 if array.ndim == 2 else array.shape[2]
        return cv2.warpAffine(
            array, matrix, dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * channels
        )

    def apply(self, img: np.ndarray, matrix: np.ndarray, dsize: tuple[int, int], **params: Any) -> np.ndarray:
        return self._warp(img, matrix, dsize, cv2.INTER_CUBIC, 0.0)

    def apply_to_mask(
        self, mask: np.ndarray, matrix: np.ndarray, dsize: tuple[int, int], **params: Any
    ) -> np.ndarray:
        return self._warp(mask, matrix, dsize, cv2.INTER_NEAREST, float(self.fill_mask))

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        normals = {task: kwargs.pop(task) for task in tasks_of_kind("normals") if task in kwargs}
        depths = {task: kwargs.pop(task) for task in tasks_of_kind("depth") if task in kwargs}
        out = super().apply_with_params(params, *args, **kwargs)
        matrix, dsize, scale = params["matrix"], params["dsize"], params["scale"]
        for task, value in normals.items():
            rot = (matrix[:, :2] / scale).astype(np.float32)  # (2, 2) pure rotation
            rotated = value.astype(np.float32, copy=True)
            rotated[..., :2] = value[..., :2] @ rot.T
            out[task] = self._warp(rotated, matrix, dsize, cv2.INTER_CUBIC, 0.0)
        for task, value in depths.items():
            warped = self._warp(value.astype(np.float32), matrix, dsize, cv2.INTER_NEAREST, 0.0)
            out[task] = warped / np.float32(scale)
        return out


class MultiTaskTransform:
    """Decoded sample (numpy, original size) -> per-sample tensors of the batch convention.

    Args:
        tasks: tasks whose labels are transformed (other keys of the sample are dropped).
        img_size: side of the square network input (and of the labels unless
            ``eval_resolution="original"``).
        augment: apply the random flip/warp (training) or only the resize (evaluation).
        flip: random horizontal flip with p=0.5 (only when ``augment``).
        rotation: rotation drawn from U(-rotation, +rotation) degrees; 0 disables it.
        scale_range: zoom drawn from U(min, max); None together with no ``scale_choices`` = no zoom.
        scale_choices: discrete zoom factors (NYUD recipe); overrides ``scale_range``.
        border_label: label of pixels created by the warp border: "ignore" (255, default) or
            "official" (0 for semseg/human_parts/sal/edge as the official code; normals and
            depth are ignored in both modes).
        eval_resolution: "resized" labels are resized to ``img_size``² with the image (the
            official 448² protocol); "original" resizes only the image and returns labels at
            their original size (then samples of a batch differ in label size, see the
            DataModule, which uses batch size 1 for evaluation in that mode).
        seed: seed of the augmentation stream (see :meth:`set_random_seed`).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        img_size: int,
        *,
        augment: bool = False,
        flip: bool = True,
        rotation: float = 20.0,
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        scale_choices: Sequence[float] | None = None,
        border_label: BorderLabel = "ignore",
        eval_resolution: EvalResolution = "resized",
        seed: int = 0,
    ) -> None:
        self.tasks = validate_tasks(list(tasks))
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if border_label not in ("ignore", "official"):
            raise ValueError(f"border_label must be 'ignore' or 'official', got {border_label!r}")
        if eval_resolution not in ("resized", "original"):
            raise ValueError(f"eval_resolution must be 'resized' or 'original', got {eval_resolution!r}")
        if rotation < 0:
            raise ValueError(f"rotation is a half-range in degrees and must be >= 0, got {rotation}")
        self.img_size = int(img_size)
        self.augment = augment
        self.border_label = border_label
        # "original" only applies to evaluation; training batches must have equal sizes.
        self.resize_labels = augment or eval_resolution == "resized"
        self.border_fill = IGNORE_INDEX if border_label == "ignore" else 0
        self.min_normal_norm = _MIN_NORMAL_NORM if border_label == "ignore" else 0.0

        steps: list[A.BasicTransform] = []
        if augment:
            if flip:
                steps.append(HorizontalFlipNormals(p=0.5))
            zooms = scale_choices is not None or (
                scale_range is not None and tuple(scale_range) != (1.0, 1.0)
            )
            if rotation > 0 or zooms:
                steps.append(
                    ScaleRotate(
                        rotation_range=(-rotation, rotation),
                        scale_range=tuple(scale_range) if scale_range is not None else (1.0, 1.0),
                        scale_choices=scale_choices,
                        fill_mask=self.border_fill,
                    )
                )
        steps.append(
            A.Resize(
                self.img_size,
                self.img_size,
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
        self.compose = A.Compose(steps, additional_targets=_additional_targets(self.tasks))
        self.set_random_seed(seed)
        self._mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
        self._inv_std = 1.0 / (np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0)

    def set_random_seed(self, seed: int) -> None:
        """Restart the augmentation stream from ``seed``.

        All steps share ONE generator pair: albumentations' own ``Compose.set_random_seed`` gives
        every step a generator seeded with the same value, which makes the flip decision and the
        first draw of the warp identical (correlated) random numbers.
        """
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tasks={self.tasks}, img_size={self.img_size}, augment={self.augment}, "
            f"border_label={self.border_label!r}, resize_labels={self.resize_labels})"
        )

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        missing = [task for task in self.tasks if task not in sample]
        if "image" not in sample or missing:
            raise KeyError(f"decoded sample lacks {['image'] * ('image' not in sample) + missing}")
        labels = {task: sample[task] for task in self.tasks}
        if self.resize_labels:
            out = self.compose(image=sample["image"], **labels)
        else:
            out = self.compose(image=sample["image"])
            out.update(labels)
        return self._finalise(out)

    # ----------------------------------------------------------------------------------------
    def _finalise(self, out: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """AddIgnoreRegions + ToTensor + Normalize of the official pipeline (with the fixes above)."""
        result: dict[str, torch.Tensor] = {"image": self._image_tensor(out["image"])}
        for task in self.tasks:
            value, spec = out[task], task_info(task)
            if spec.kind == "segmentation":
                labels = value.astype(np.int64)
                if spec.ignore_without_foreground and not _has_foreground(labels, spec.channels):
                    labels = np.full_like(
                        labels, IGNORE_INDEX
                    )  # e.g. no person parts: ignored, not background
                result[task] = torch.from_numpy(labels)
            elif spec.kind == "binary":
                result[task] = torch.from_numpy(value.astype(np.float32)[None])
            elif spec.kind == "normals":
                result[task] = torch.from_numpy(self._normals(value))
            elif spec.kind == "depth":
                depth = value.astype(np.float32, copy=True)
                depth[(depth <= 0) | ~np.isfinite(depth)] = IGNORE_INDEX
                result[task] = torch.from_numpy(depth[None])
        return result

    def _image_tensor(self, image: np.ndarray) -> torch.Tensor:
        if image.dtype != np.uint8:
            image = np.clip(
                image, 0.0, 255.0
            )  # never wrap overshoots around (the official code casts without clipping)
        chw = ((image.astype(np.float32) - self._mean) * self._inv_std).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(chw))

    def _normals(self, normals: np.ndarray) -> np.ndarray:
        normals = normals.astype(np.float32, copy=False)
        norm = np.linalg.norm(normals, axis=2, keepdims=True)  # (H, W, 1)
        valid = norm[..., 0] >= self.min_normal_norm if self.min_normal_norm > 0 else norm[..., 0] > 0
        unit = normals / np.maximum(norm, 1e-12)
        unit[~valid] = IGNORE_INDEX
        return np.ascontiguousarray(unit.transpose(2, 0, 1))


def _has_foreground(labels: np.ndarray, channels: int | None) -> bool:
    """Whether a label map holds any class ``1..channels-1`` (any non-zero class if unbounded)."""
    top = IGNORE_INDEX - 1 if channels is None else channels - 1
    return bool(((labels >= 1) & (labels <= top)).any())
