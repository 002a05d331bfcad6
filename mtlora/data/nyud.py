"""NYUD-v2 multi-task data in both published layouts (docs/official_implementation.md, "Data").

* ``NYUD_MT`` (Vandenhende / MTLoRA archive): ``images/<id>.jpg``, ``segmentation/<id>.png``,
  ``depth/<id>.npy``, ``normals/<id>.npy`` (H x W x 3 floats), ``edge/<id>.npy``.
* ``NYUDv2`` (ATRC repack used by InvPT and successors): ``images/<id>.png``,
  ``segmentation/<id>.png``, ``depth/<id>.npy``, ``normals/<id>.png`` (``2 v / 255 - 1``),
  ``edge/<id>.png`` (``v / 255``).

Both have ``gt_sets/{train,val}.txt``.  Segmentation PNGs hold 1..40 with 0 = unlabelled; the
loader shifts them to 0..39 and maps 0 to 255 (ignore) in both layouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.dataset import Reader, SampleFile
from mtlora.data.io import (
    DataError,
    DataRootNotFoundError,
    read_gray01,
    read_ids,
    read_label_png,
    read_normals_png,
    read_npy,
    read_rgb,
    require_same_size,
)
from mtlora.tasks import IGNORE_INDEX

__all__ = ["NYUDDataModule", "NYUDReader", "NYUD_MT_GDRIVE_ID", "detect_nyud_layout"]

log = logging.getLogger(__name__)

NYUD_MT_GDRIVE_ID = "14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw"
NUM_SEMSEG_CLASSES = 40
NYUDLayout = Literal["auto", "NYUD_MT", "NYUDv2"]

# layout -> file extension per folder
_EXTENSIONS: dict[str, dict[str, str]] = {
    "NYUD_MT": {"images": ".jpg", "segmentation": ".png", "depth": ".npy", "normals": ".npy", "edge": ".npy"},
    "NYUDv2": {"images": ".png", "segmentation": ".png", "depth": ".npy", "normals": ".png", "edge": ".png"},
}
_TASK_FOLDER = {"semseg": "segmentation", "depth": "depth", "normals": "normals", "edge": "edge"}


def _missing_root_error(root: Path, missing: list[Path]) -> DataRootNotFoundError:
    return DataRootNotFoundError(
        f"NYUD-v2 data not found: {', '.join(str(p) for p in missing)} missing (data.root={root}).\n"
        "Expected the NYUD_MT layout (images/<id>.jpg, segmentation/<id>.png, depth/<id>.npy, "
        "normals/<id>.npy, edge/<id>.npy, gt_sets/{train,val}.txt) or the repacked NYUDv2 layout "
        "(images/<id>.png, normals/<id>.png, edge/<id>.png, same other folders).\n"
        f"NYUD_MT.tgz is on Google Drive, file id {NYUD_MT_GDRIVE_ID} "
        f"(https://drive.google.com/file/d/{NYUD_MT_GDRIVE_ID}); pass the extracted NYUD_MT/ folder "
        "as --data.root.\n"
        "To try the library without downloading anything, run `mtlora fit --config configs/demo.yaml` "
        "(synthetic data set)."
    )


def detect_nyud_layout(root: Path) -> Literal["NYUD_MT", "NYUDv2"]:
    """Tell the two layouts apart by the image file of the first listed sample (then by listing)."""
    images = root / "images"
    for split in ("train", "val"):
        split_file = root / "gt_sets" / f"{split}.txt"
        if split_file.is_file():
            ids = read_ids(split_file)
            if (images / f"{ids[0]}.jpg").is_file():
                return "NYUD_MT"
            if (images / f"{ids[0]}.png").is_file():
                return "NYUDv2"
    suffixes = {p.suffix.lower() for _, p in zip(range(50), images.iterdir())} if images.is_dir() else set()
    if ".jpg" in suffixes and ".png" not in suffixes:
        return "NYUD_MT"
    if ".png" in suffixes and ".jpg" not in suffixes:
        return "NYUDv2"
    raise DataError(
        f"cannot tell the NYUD layout of {root}: images/ holds neither only .jpg (NYUD_MT) nor only "
        f".png (NYUDv2) files; set data.layout explicitly"
    )


class NYUDReader:
    """Picklable decoder of one NYUD sample for a fixed layout and task list."""

    def __init__(self, root: Path, layout: Literal["NYUD_MT", "NYUDv2"], tasks: list[str]) -> None:
        self.root = Path(root)
        self.layout = layout
        self.tasks = list(tasks)
        self.extensions = _EXTENSIONS[layout]

    def path(self, folder: str, sample_id: str) -> Path:
        return self.root / folder / f"{sample_id}{self.extensions[folder]}"

    # One decoder per file kind; each returns the decoded-sample convention.
    def read_semseg(self, path: Path) -> np.ndarray:
        raw = read_label_png(path)
        bad = (raw > NUM_SEMSEG_CLASSES) & (raw != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"{path}: segmentation values must be 0 (unlabelled) or 1..{NUM_SEMSEG_CLASSES}, "
                f"found {sorted(np.unique(raw[bad]).tolist())[:8]}"
            )
        semseg = raw - np.uint8(1)  # 1..40 -> 0..39
        semseg[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
        return semseg

    def read_depth(self, path: Path) -> np.ndarray:
        depth = read_npy(path)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise DataError(f"{path}: depth must be H x W, got shape {depth.shape}")
        depth = depth.astype(np.float32)
        if depth.size and not np.isfinite(depth).any():  # NaN/inf would silently be "no label"
            raise DataError(f"{path}: depth map has no finite value (all NaN/inf)")
        return depth

    def read_normals(self, path: Path) -> np.ndarray:
        if self.layout == "NYUDv2":
            return read_normals_png(path)
        normals = read_npy(path, ndim=(3,))
        if normals.shape[2] != 3:
            raise DataError(f"{path}: normals must be H x W x 3, got shape {normals.shape}")
        return np.nan_to_num(normals.astype(np.float32))

    def read_edge(self, path: Path) -> np.ndarray:
        if self.layout == "NYUDv2":
            edge = read_gray01(path)
        else:
            edge = read_npy(path)
            if edge.ndim == 3 and edge.shape[2] == 1:
                edge = edge[..., 0]
            if edge.ndim != 2:
                raise DataError(f"{path}: edge must be H x W, got shape {edge.shape}")
        return (edge > 0.5).astype(np.uint8)

    def decoders(self) -> dict[str, Callable[[Path], np.ndarray]]:
        return {
            "semseg": self.read_semseg,
            "depth": self.read_depth,
            "normals": self.read_normals,
            "edge": self.read_edge,
        }

    def __call__(self, sample_id: str) -> dict[str, np.ndarray]:
        image_path = self.path("images", sample_id)
        image = read_rgb(image_path)
        sample: dict[str, np.ndarray] = {"image": image}
        decoders = self.decoders()
        for task in self.tasks:
            path = self.path(_TASK_FOLDER[task], sample_id)
            value = decoders[task](path)
            require_same_size(value, image.shape, path, image_path)
            sample[task] = value
        return sample


class NYUDDataModule(MultiTaskDataModule):
    """NYUD-v2 with semseg (40 classes), depth, normals and edge; both layouts.

    Args:
        root: the extracted NYUD_MT (or NYUDv2) folder.
        tasks: tasks to load (default all four).
        layout: "auto" (detected from the files), "NYUD_MT" or "NYUDv2".
        rotation: rotation half-range in degrees (official NYUD recipe: 0).
        scale_choices: discrete zoom factors (official: 1.0, 1.2, 1.5; depth is divided by the
            zoom); empty = use ``scale_range``.
        scale_range: continuous zoom range, used when ``scale_choices`` is empty.
        Other arguments: see :class:`~mtlora.data.datamodule.MultiTaskDataModule`.
    """

    available_tasks = ("semseg", "depth", "normals", "edge")

    def __init__(
        self,
        root: str,
        tasks: list[str] | None = None,
        layout: NYUDLayout = "auto",
        rotation: float = 0.0,
        scale_choices: tuple[float, ...] = (1.0, 1.2, 1.5),
        scale_range: tuple[float, float] = (1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tasks=list(tasks) if tasks is not None else ["semseg", "depth", "normals", "edge"],
            rotation=rotation,
            scale_range=scale_range,
            **kwargs,
        )
        self.transform_options["scale_choices"] = tuple(scale_choices) if scale_choices else None
        self.build_transform(train=True)  # fail on bad augmentation options now, not in a worker
        self.root = Path(root).expanduser()
        self.data_uri = str(root)  # a raw folder, or a prepared data set (local or URI)
        if layout not in ("auto", "NYUD_MT", "NYUDv2"):
            raise ValueError(f"layout must be 'auto', 'NYUD_MT' or 'NYUDv2', got {layout!r}")
        # the folder is checked when data is first needed (prepare_data/setup), so the module
        # can be built without data, e.g. by `mtlora summary`
        self._layout_option = layout
        self._layout: Literal["NYUD_MT", "NYUDv2"] | None = None
        self.save_hyperparameters()

    def check_root(self) -> None:
        """Fail with where the data is expected and where it comes from, if the folder is missing."""
        if self.prepared is not None:
            return
        required = [self.root / "images", self.root / "gt_sets"]
        missing = [p for p in required if not p.is_dir()]
        if missing:
            raise _missing_root_error(self.root, missing)

    @property
    def layout(self) -> Literal["NYUD_MT", "NYUDv2"]:
        if self._layout is None:
            self.check_root()
            option = self._layout_option
            self._layout = detect_nyud_layout(self.root) if option == "auto" else option
            log.info("NYUD root %s: %s layout", self.root, self._layout)
        return self._layout

    @property
    def semseg_classes(self) -> int:
        return NUM_SEMSEG_CLASSES

    def split_ids(self, split: str) -> list[str]:
        self.check_root()
        return read_ids(self.root / "gt_sets" / f"{split}.txt")

    def make_reader(self, split: str) -> Reader:
        return NYUDReader(self.root, self.layout, self.tasks)

    def setup(self, stage: str | None = None) -> None:
        self.check_root()
        missing = (
            []
            if self.prepared is not None
            else [
                f"{_TASK_FOLDER[task]}/ (task {task})"
                for task in self.tasks
                if not (self.root / _TASK_FOLDER[task]).is_dir()
            ]
        )
        if missing:
            raise DataError(
                f"NYUD root {self.root} lacks the folders of the selected tasks: {'; '.join(missing)}. "
                "Remove those tasks from data.tasks or complete the folder."
            )
        super().setup(stage)

    def sample_files(self, sample_id: str) -> list[SampleFile]:
        reader = NYUDReader(self.root, self.layout, self.tasks)
        decoders = reader.decoders()
        files = [SampleFile("image", (reader.path("images", sample_id),), tuple(self.tasks), read_rgb, True)]
        for task in self.tasks:
            folder = _TASK_FOLDER[task]
            files.append(SampleFile(task, (reader.path(folder, sample_id),), (task,), decoders[task]))
        return files
