"""Synthetic multi-task scenes: the embedded default data set (no disk, no download).

Each sample is generated on the fly from ``(seed, split, index)``, so any sample can be
re-created exactly and nothing has to be stored.  A scene is a receding background plane
(class 0) with a few objects in front of it, drawn with a z-buffer so that every task is
derived from the same geometry:

* semseg: object class per visible pixel (class 0 = background);
* human_parts: objects of the "person" class (15 with 21 classes, like PASCAL) carry six parts
  (head; torso; upper/lower arm; upper/lower leg); images without a visible person are all 255
  (ignored), as PASCAL images without annotated persons;
* sal: visible object pixels;
* depth: the z-buffer (metres); normals: the analytic normal of the visible surface (planes
  for boxes and persons, domes for ellipses), unit length, NYU convention (x right, y down,
  z towards the camera);
* edge: boundaries between semantic classes;
* image: class colour (part tint on persons) x Lambertian shading from the normals + class
  stripes + depth haze + noise, so every task is visible in the RGB image.

Any other registered task whose :attr:`~mtlora.tasks.TaskSpec.synthetic` function derives its
label from such a scene is available too.
"""

from __future__ import annotations

import colorsys
import logging
from typing import Any

import numpy as np

from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.dataset import Reader
from mtlora.data.transforms import AugmentOn
from mtlora.tasks import IGNORE_INDEX, TASKS

__all__ = ["SyntheticDataModule", "SyntheticScenes"]

log = logging.getLogger(__name__)

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: Tasks the renderer draws itself (in the order of the default task list).
RENDERED_TASKS = ("semseg", "human_parts", "sal", "normals", "edge", "depth")
_LIGHT = np.array([-0.4, -0.6, 0.7], dtype=np.float32) / np.linalg.norm([-0.4, -0.6, 0.7])
_HAZE = np.array([0.72, 0.76, 0.82], dtype=np.float32)
# Tints of the six parts (head, torso, upper arm, lower arm, upper leg, lower leg).
_PART_TINTS = np.array(
    [
        [1.0, 0.85, 0.7],
        [0.2, 0.35, 0.9],
        [0.9, 0.2, 0.2],
        [0.95, 0.75, 0.1],
        [0.15, 0.7, 0.25],
        [0.5, 0.2, 0.6],
    ],
    dtype=np.float32,
)


def _class_palette(num_classes: int) -> np.ndarray:
    """Well separated colours (golden-ratio hues), background grey-blue; (C, 3) in [0, 1]."""
    colours = [(0.55, 0.58, 0.62)]
    for k in range(1, num_classes):
        hue = (k * 0.618034) % 1.0
        sat = 0.85 if k % 2 else 0.6
        val = 0.95 if (k // 2) % 2 else 0.75
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
    return np.asarray(colours, dtype=np.float32)


class SyntheticScenes:
    """Picklable renderer: ``sample_id`` (``"<split>-<index>"``) -> decoded sample.

    Args:
        seed: base seed; (seed, split, index) fully determines a scene.
        split: "train", "val" or "test" (different scenes per split).
        img_size: side of the square image.
        num_classes: semantic classes including background 0 (>= 2).
        person_class: class id carrying human parts (None: no persons).
    """

    def __init__(
        self, seed: int, split: str, img_size: int, num_classes: int, person_class: int | None
    ) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be one of {list(_SPLIT_CODES)}, got {split!r}")
        self.seed = int(seed)
        self.split = split
        self.size = int(img_size)
        self.num_classes = int(num_classes)
        self.person_class = person_class
        self.palette = _class_palette(num_classes)
        self._other_classes = [c for c in range(1, num_classes) if c != person_class]
        classes = np.arange(num_classes, dtype=np.float32)
        self._stripe_freq = (2 * np.pi * (4.0 + (classes % 5) * 3.0)).astype(np.float32)
        self._stripe_cos = np.cos(classes * 0.7).astype(np.float32)
        self._stripe_sin = np.sin(classes * 0.7).astype(np.float32)
        centres = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size
        self.v, self.u = np.meshgrid(centres, centres, indexing="ij")  # (S, S) row / column coords in (0, 1)

    def __call__(self, sample_id: str) -> dict[str, np.ndarray]:
        return self.render(int(sample_id.rsplit("-", 1)[1]))

    def render(self, index: int) -> dict[str, np.ndarray]:
        """Generate scene ``index`` of this split."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], int(index)])
        u, v, size = self.u, self.v, self.size

        # Background plane receding towards the top of the image.
        z_far, z_near = rng.uniform(6.0, 9.0), rng.uniform(3.0, 4.5)
        tilt_u = rng.uniform(-1.0, 1.0)
        depth = (z_far + (z_near - z_far) * v + tilt_u * (u - 0.5)).astype(np.float32)
        normals = np.empty((size, size, 3), dtype=np.float32)
        normals[:] = _unit([tilt_u * 0.5, (z_near - z_far) * 0.5, 1.0])
        semseg = np.zeros((size, size), dtype=np.uint8)
        parts = np.zeros((size, size), dtype=np.uint8)
        tint = np.zeros((size, size, 3), dtype=np.float32)  # part tint; 0 = use the class colour

        for _ in range(int(rng.integers(1, 5))):
            self._draw_object(rng, depth, normals, semseg, parts, tint)

        has_person = bool(parts.any())
        if not has_person:
            parts[:] = IGNORE_INDEX
        sal = (semseg != 0).astype(np.uint8)
        edge = np.zeros((size, size), dtype=np.uint8)
        horizontal = semseg[:, 1:] != semseg[:, :-1]
        vertical = semseg[1:, :] != semseg[:-1, :]
        edge[:, :-1] |= horizontal
        edge[:-1, :] |= vertical

        image = self._shade(rng, semseg, normals, depth, tint)
        scene = {
            "image": image,
            "semseg": semseg,
            "human_parts": parts,
            "sal": sal,
            "edge": edge,
            "normals": normals,
            "depth": depth,
        }
        for name, spec in TASKS.items():  # registered tasks derived from the rendered ones
            if name not in scene and spec.synthetic is not None:
                scene[name] = spec.synthetic(scene)
        return scene

    def _draw_object(
        self,
        rng: np.random.Generator,
        depth: np.ndarray,
        normals: np.ndarray,
        semseg: np.ndarray,
        parts: np.ndarray,
        tint: np.ndarray,
    ) -> None:
        others = self._other_classes
        is_person = self.person_class is not None and (rng.random() < 0.4 or not others)
        if is_person:
            cls = self.person_class
            half_w, half_h = rng.uniform(0.08, 0.16), rng.uniform(0.2, 0.38)
            shape = "box"
        else:
            cls = int(rng.choice(others))
            half_w, half_h = rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.25)
            shape = "box" if rng.random() < 0.5 else "dome"
        cu, cv = rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.85)
        z0 = rng.uniform(1.0, 2.6)
        if shape == "box":
            gu, gv = rng.uniform(-0.6, 0.6, size=2)
        else:
            height = rng.uniform(0.3, 0.8)
        # Work inside the object's bounding box only (views into the full maps).
        size = self.size
        rows = slice(max(int((cv - half_h) * size), 0), min(int(np.ceil((cv + half_h) * size)) + 1, size))
        cols = slice(max(int((cu - half_w) * size), 0), min(int(np.ceil((cu + half_w) * size)) + 1, size))
        u, v = self.u[rows, cols], self.v[rows, cols]
        depth, normals, semseg = depth[rows, cols], normals[rows, cols], semseg[rows, cols]
        parts, tint = parts[rows, cols], tint[rows, cols]
        du, dv = (u - cu) / half_w, (v - cv) / half_h  # object-local coords, [-1, 1] inside

        if shape == "box":
            inside = (np.abs(du) <= 1.0) & (np.abs(dv) <= 1.0)
            z = z0 + gu * (u - cu) + gv * (v - cv)
            nrm = np.broadcast_to(_unit([gu * 0.5, gv * 0.5, 1.0]), normals.shape)
        else:
            r2 = du * du + dv * dv
            inside = r2 <= 1.0
            cap = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
            z = z0 - height * cap
            raw = np.stack([du, dv, np.maximum(cap, 0.15)], axis=-1)
            nrm = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
        visible = inside & (z < depth)
        if not visible.any():
            return
        depth[visible] = z[visible]
        normals[visible] = nrm[visible]
        semseg[visible] = cls
        parts[visible] = 0
        tint[visible] = 0.0
        if is_person:
            pu, pv = (du[visible] + 1.0) / 2.0, (dv[visible] + 1.0) / 2.0
            arm = (pu < 0.25) | (pu >= 0.75)
            part = np.where(
                pv < 0.2,
                1,
                np.where(pv < 0.6, np.where(arm, np.where(pv < 0.4, 3, 4), 2), np.where(pv < 0.8, 5, 6)),
            ).astype(np.uint8)
            parts[visible] = part
            tint[visible] = _PART_TINTS[part - 1]

    def _shade(
        self,
        rng: np.random.Generator,
        semseg: np.ndarray,
        normals: np.ndarray,
        depth: np.ndarray,
        tint: np.ndarray,
    ) -> np.ndarray:
        base = self.palette[semseg]  # (S, S, 3)
        has_tint = tint.any(axis=-1, keepdims=True)
        base = np.where(has_tint, 0.35 * base + 0.65 * tint, base)
        # Class-specific stripes: frequency and orientation depend on the class id.
        phase = self._stripe_freq[semseg] * (
            self.u * self._stripe_cos[semseg] + self.v * self._stripe_sin[semseg]
        )
        stripes = np.sin(phase)
        lambert = np.clip(normals @ _LIGHT, 0.0, 1.0)
        colour = base * (0.35 + 0.65 * lambert)[..., None] * (1.0 + 0.08 * stripes)[..., None]
        haze = np.clip((depth - 1.0) / 12.0, 0.0, 0.6)[..., None]
        colour = (1.0 - haze) * colour + haze * _HAZE
        colour += 0.02 * rng.standard_normal(colour.shape, dtype=np.float32)
        return (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


class SyntheticDataModule(MultiTaskDataModule):
    """Deterministic synthetic scenes with all six tasks; runs anywhere, in seconds.

    Registered tasks with a synthetic-label function are available as well (:attr:`available_tasks`).

    Args:
        tasks: tasks to produce (default all six).
        train_size: number of training scenes.
        val_size: number of validation scenes.
        test_size: number of test scenes (a third, independent split).
        num_classes: semantic classes including background (default 21 like PASCAL);
            the person class is 15 when it exists, else 1.
        img_size: image side (scenes are rendered at this size directly; 64 for CPU demos).
        augment: apply the training augmentation of the real data sets (default off: the
            scenes are already random, and off keeps CPU runs fast).
        augment_on: "cpu" by default here: scenes are rendered at ``img_size`` and not
            augmented unless asked, so the loader has no warp to move to the device.
        Other arguments: see :class:`~mtlora.data.datamodule.MultiTaskDataModule`.
    """

    test_split = "test"

    @property
    def available_tasks(self) -> tuple[str, ...]:  # type: ignore[override]
        """The rendered tasks and every registered task with a synthetic-label function."""
        extra = (name for name, spec in TASKS.items() if spec.synthetic is not None)
        return (*RENDERED_TASKS, *(name for name in extra if name not in RENDERED_TASKS))

    def __init__(
        self,
        tasks: list[str] | None = None,
        train_size: int = 512,
        val_size: int = 64,
        test_size: int = 64,
        num_classes: int = 21,
        img_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = False,
        augment_on: AugmentOn = "cpu",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tasks=list(tasks) if tasks is not None else list(RENDERED_TASKS),
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            augment_on=augment_on,
            **kwargs,
        )
        if not 2 <= num_classes <= 255:
            raise ValueError(
                f"num_classes must be in 2..255 (background + object classes), got {num_classes}"
            )
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_classes = num_classes
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.person_class: int | None = 15 if num_classes > 15 else 1
        self.save_hyperparameters()

    @property
    def semseg_classes(self) -> int:
        return self.num_classes

    def data_splits(self) -> list[str]:
        return ["train", "val", "test"]

    def split_ids(self, split: str) -> list[str]:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; synthetic splits: {list(self.sizes)}")
        return [f"{split}-{index:06d}" for index in range(self.sizes[split])]

    def make_reader(self, split: str) -> Reader:
        return SyntheticScenes(self.seed, split, self.img_size, self.num_classes, self.person_class)

    def describe_root(self) -> str:
        return f"synthetic scenes (seed {self.seed}, {self.img_size}px, {self.num_classes} classes)"

    def example(self, split: str = "train", index: int = 0) -> dict[str, Any]:
        """The decoded (untransformed) sample ``index`` of ``split``; handy in notebooks."""
        return self.make_reader(split)(f"{split}-{index:06d}")
