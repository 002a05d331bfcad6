"""PASCAL-Context multi-task data (the PASCAL_MT layout of ASTMT / MTLoRA).

Reads the folder exactly as the archive extracts (layout in docs/official_implementation.md, "Data")::

    PASCAL_MT/
      JPEGImages/<id>.jpg
      ImageSets/Context/{train,val}.txt
      semseg/VOC12/<id>.png            (palette PNG; tried first)
      semseg/pascal-context/<id>.png   (8-bit label PNG; fallback)
      human_parts/<id>.mat             (PASCAL-Part 'anno' struct)
      sal_distill/<id>.png
      normals_distill/<id>.png
      pascal-context/trainval/<id>.mat (LabelMap, 459 context classes: edges + normals mask)

The folder is only read, never written.  The official loader writes a per-image category
cache into ``ImageSets/Parts/<split>.txt`` and skips the .mat files of images it lists without a
person; here that cache is never read: a stale or hand-edited cache would silently switch the
task off for images that do have part labels, while ``mtlora data check`` (which decodes the
files) reports them fine.  Every ``human_parts`` file is decoded by :func:`decode_human_parts`,
the one place that decides whether an image has part labels; a .mat file without a person
decodes in under a millisecond, a small fraction of a sample's decoding time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.dataset import Reader, SampleFile
from mtlora.data.io import (
    DataError,
    DataRootNotFoundError,
    db_info,
    read_gray01,
    read_ids,
    read_label_png,
    read_mat_variable,
    read_normals_png,
    read_rgb,
    require_same_size,
)
from mtlora.tasks import IGNORE_INDEX

__all__ = [
    "PASCAL_MT_URL",
    "PascalContextDataModule",
    "PascalContextReader",
    "decode_human_parts",
    "edges_from_label_map",
    "human_part_ids",
    "normals_valid_context_ids",
]

log = logging.getLogger(__name__)

PASCAL_MT_URL = "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz"
PERSON_CLASS = 15
NUM_SEMSEG_CLASSES = 21

# Fine PASCAL-Part person part names -> the six parts of the multi-task benchmark (as the official reader).
_PART_GROUPS = {
    1: ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "nose", "mouth"),
    2: ("torso", "neck"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}


def human_part_ids() -> dict[str, int]:
    """Fine person part name -> part id 1..6, checked against ``pascal_part.json`` category 15."""
    known = set(db_info("pascal_part")[str(PERSON_CLASS)])
    mapping = {name: group for group, names in _PART_GROUPS.items() for name in names}
    if set(mapping) != known:
        raise RuntimeError(f"part mapping and pascal_part.json disagree: {sorted(set(mapping) ^ known)}")
    return mapping


def normals_valid_context_ids() -> frozenset[int]:
    """Context class ids on which the distilled normals are valid (170 ids).

    The context classes whose name is also an NYU class (except 'unknown'), plus 'tvmonitor'.
    """
    context = db_info("context_classes")
    nyu = db_info("nyu_classes")
    ids = {cid for name, cid in context.items() if name in nyu and name != "unknown"}
    ids.add(context["tvmonitor"])
    return frozenset(ids)


def edges_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """Official edge label: non-zero Laplacian of the context LabelMap, thinned; (H, W) uint8 {0, 1}."""
    import cv2
    from skimage.morphology import thin

    laplacian = cv2.Laplacian(label_map.astype(np.float32), cv2.CV_32F)  # 3x3 kernel, reflect-101 border
    return thin(np.abs(laplacian) > 0).astype(np.uint8)


def _mat_string(value: np.ndarray | str) -> str:
    """A MATLAB char array as loaded by scipy (``array(['head'], dtype='<U4')``) -> 'head'."""
    if isinstance(value, str):
        return value
    flat = np.asarray(value).ravel()
    return str(flat[0]) if flat.size else ""


def decode_human_parts(path: Path, shape: tuple[int, int], part_ids: dict[str, int]) -> np.ndarray:
    """Decode a PASCAL-Part ``anno`` file to the 7-class map; (H, W) uint8, all 255 without persons.

    Fields are accessed by position like the official loader (objects = anno[0][0][1][0];
    object: [1] class_ind, [2] mask, [3] parts; part: [0] name, [1] mask).  Persons
    (class_ind 15) paint their parts in file order; persons without parts stay 0 (background).
    An image without a person of non-zero area, or where no part got painted, is all 255: the
    official loader returns all zeros there and its AddIgnoreRegions turns that into 255.
    """
    anno = read_mat_variable(path, "anno")
    try:
        objects = anno[0][0][1]
        objects = objects[0] if objects.size else []
        target = np.zeros(shape, dtype=np.uint8)
        has_person = False
        for obj in objects:
            if np.asarray(obj[1]).item() != PERSON_CLASS:
                continue
            mask = np.asarray(obj[2])
            if mask.shape[:2] != tuple(shape):
                raise DataError(
                    f"{path}: person mask is {mask.shape[0]}x{mask.shape[1]}, image is {shape[0]}x{shape[1]}"
                )
            has_person = has_person or bool(mask.any())
            parts = np.asarray(obj[3])
            if parts.size == 0:  # 0x0 double array or 1x0 struct array: person without parts
                continue
            for part in parts.ravel():
                name = _mat_string(part[0])
                if name not in part_ids:
                    raise DataError(f"{path}: unknown person part name {name!r}; known: {sorted(part_ids)}")
                part_mask = np.asarray(part[1]).astype(bool)
                if part_mask.shape != tuple(shape):
                    raise DataError(
                        f"{path}: mask of part {name!r} has size {part_mask.shape}, image is {shape}"
                    )
                target[part_mask] = part_ids[name]
    except DataError:
        raise
    except (IndexError, TypeError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a PASCAL-Part 'anno' struct ({type(err).__name__}: {err})") from err
    if not has_person or not target.any():
        target[:] = IGNORE_INDEX  # the official all-zero map, turned into "ignored" by AddIgnoreRegions
    return target


def _check_root(root: Path) -> None:
    required = [root / "JPEGImages", root / "ImageSets" / "Context"]
    missing = [p for p in required if not p.is_dir()]
    if missing:
        raise DataRootNotFoundError(
            f"PASCAL-Context data not found: {', '.join(str(p) for p in missing)} missing (data.root={root}).\n"
            "Expected the PASCAL_MT layout: JPEGImages/<id>.jpg, ImageSets/Context/{train,val}.txt, "
            "semseg/VOC12|pascal-context/<id>.png, human_parts/<id>.mat, sal_distill/<id>.png, "
            "normals_distill/<id>.png, pascal-context/trainval/<id>.mat.\n"
            f"Download and extract PASCAL_MT.tgz from {PASCAL_MT_URL} and pass the extracted "
            "PASCAL_MT/ folder as --data.root.\n"
            "To try the library without downloading anything, run `mtlora fit --config configs/demo.yaml` "
            "(synthetic data set)."
        )


class PascalContextReader:
    """Picklable decoder of one PASCAL_MT sample for a fixed task list.

    Args:
        root: the PASCAL_MT folder.
        tasks: tasks to decode (only their files are opened).
    """

    def __init__(self, root: Path, tasks: list[str]) -> None:
        self.root = Path(root)
        self.tasks = list(tasks)
        self.part_ids = human_part_ids() if "human_parts" in tasks else {}
        self.valid_normals = np.asarray(sorted(normals_valid_context_ids())) if "normals" in tasks else None

    # Paths --------------------------------------------------------------------------------
    def image_path(self, sample_id: str) -> Path:
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def semseg_candidates(self, sample_id: str) -> tuple[Path, Path]:
        return (
            self.root / "semseg" / "VOC12" / f"{sample_id}.png",
            self.root / "semseg" / "pascal-context" / f"{sample_id}.png",
        )

    def parts_path(self, sample_id: str) -> Path:
        return self.root / "human_parts" / f"{sample_id}.mat"

    def sal_path(self, sample_id: str) -> Path:
        return self.root / "sal_distill" / f"{sample_id}.png"

    def normals_path(self, sample_id: str) -> Path:
        return self.root / "normals_distill" / f"{sample_id}.png"

    def label_map_path(self, sample_id: str) -> Path:
        return self.root / "pascal-context" / "trainval" / f"{sample_id}.mat"

    # Decoding -------------------------------------------------------------------------------
    def read_label_map(self, path: Path) -> np.ndarray:
        label_map = read_mat_variable(path, "LabelMap")
        if label_map.ndim != 2:
            raise DataError(f"{path}: LabelMap must be 2-D, got shape {label_map.shape}")
        return label_map

    def read_semseg(self, path: Path) -> np.ndarray:
        semseg = read_label_png(path)
        bad = (semseg >= NUM_SEMSEG_CLASSES) & (semseg != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"{path}: semseg values {sorted(np.unique(semseg[bad]).tolist())[:8]} are outside "
                f"0..{NUM_SEMSEG_CLASSES - 1} and not {IGNORE_INDEX} (ignore)"
            )
        return semseg

    def __call__(self, sample_id: str) -> dict[str, np.ndarray]:
        image_path = self.image_path(sample_id)
        image = read_rgb(image_path)
        shape = image.shape[:2]
        sample: dict[str, np.ndarray] = {"image": image}
        if "semseg" in self.tasks:
            voc, context = self.semseg_candidates(sample_id)
            path = voc if voc.exists() else context
            semseg = self.read_semseg(path)
            require_same_size(semseg, shape, path, image_path)
            sample["semseg"] = semseg
        if "human_parts" in self.tasks:
            sample["human_parts"] = decode_human_parts(self.parts_path(sample_id), shape, self.part_ids)
        if "sal" in self.tasks:
            path = self.sal_path(sample_id)
            sal = read_gray01(path)
            require_same_size(sal, shape, path, image_path)
            sample["sal"] = (sal > 0.5).astype(np.uint8)
        if "normals" in self.tasks or "edge" in self.tasks:
            map_path = self.label_map_path(sample_id)
            label_map = self.read_label_map(map_path)
            require_same_size(label_map, shape, map_path, image_path)
            if "normals" in self.tasks:
                path = self.normals_path(sample_id)
                normals = read_normals_png(path)
                require_same_size(normals, shape, path, image_path)
                valid = np.isin(label_map, self.valid_normals)
                normals[~valid] = 0.0  # invalid -> zero vector -> 255 after the transform
                sample["normals"] = normals
            if "edge" in self.tasks:
                sample["edge"] = edges_from_label_map(label_map)
        return sample


class PascalContextDataModule(MultiTaskDataModule):
    """PASCAL-Context (PASCAL_MT) with semseg (21 classes), human_parts, sal, normals, edge.

    Args:
        root: the extracted PASCAL_MT folder.
        tasks: tasks to load (default: the 4 tasks of the MTLoRA PEFT protocol).
        skip_broken: skip unreadable/corrupt/mis-sized samples (logged and counted) instead
            of raising :class:`~mtlora.data.io.DataError` naming the file.
        Other arguments: see :class:`~mtlora.data.datamodule.MultiTaskDataModule`; the
        defaults reproduce the official 448² training protocol.
    """

    available_tasks = ("semseg", "human_parts", "sal", "normals", "edge")

    def __init__(self, root: str, tasks: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(
            tasks=list(tasks) if tasks is not None else ["semseg", "human_parts", "sal", "normals"], **kwargs
        )
        self.root = Path(root).expanduser()
        self.data_uri = str(root)  # a raw folder, or a prepared data set (local or URI)
        # the folder is checked when data is first needed (prepare_data/setup), so the module
        # can be built without data, e.g. by `mtlora summary`
        self.save_hyperparameters()

    def check_root(self) -> None:
        """Fail with where the data is expected and where it comes from, if the folder is missing."""
        if self.prepared is None:
            _check_root(self.root)

    @property
    def semseg_classes(self) -> int:
        return NUM_SEMSEG_CLASSES

    def split_ids(self, split: str) -> list[str]:
        self.check_root()
        return read_ids(self.root / "ImageSets" / "Context" / f"{split}.txt")

    def make_reader(self, split: str) -> Reader:
        return PascalContextReader(self.root, self.tasks)

    def setup(self, stage: str | None = None) -> None:
        self.check_root()
        if self.prepared is None:
            self._check_task_folders()
        super().setup(stage)

    def _check_task_folders(self) -> None:
        needed = {
            "semseg": [("semseg/VOC12", "semseg/pascal-context")],
            "human_parts": [("human_parts",)],
            "sal": [("sal_distill",)],
            "normals": [("normals_distill",), ("pascal-context/trainval",)],
            "edge": [("pascal-context/trainval",)],
        }
        missing = []
        for task in self.tasks:
            for alternatives in needed[task]:
                if not any((self.root / folder).is_dir() for folder in alternatives):
                    missing.append(f"{' or '.join(alternatives)} (task {task})")
        if missing:
            raise DataError(
                f"PASCAL-Context root {self.root} lacks the folders of the selected tasks: "
                f"{'; '.join(missing)}. Remove those tasks from data.tasks or complete the folder "
                f"(PASCAL_MT.tgz from {PASCAL_MT_URL})."
            )

    def sample_files(self, sample_id: str) -> list[SampleFile]:
        if getattr(self, "_check_reader", None) is None:
            self._check_reader = PascalContextReader(self.root, self.tasks)
        reader = self._check_reader
        part_ids = reader.part_ids

        def parts_shape(path: Path) -> np.ndarray | None:
            anno = read_mat_variable(path, "anno")
            try:
                objects = anno[0][0][1]
                masks = [np.asarray(obj[2]) for obj in (objects[0] if objects.size else [])]
            except (IndexError, TypeError, ValueError) as err:
                raise DataError(f"{path}: not a PASCAL-Part 'anno' struct ({err})") from err
            if not masks:
                return None
            return decode_human_parts(path, masks[0].shape[:2], part_ids)

        files = [SampleFile("image", (reader.image_path(sample_id),), tuple(self.tasks), read_rgb, True)]
        if "semseg" in self.tasks:
            files.append(
                SampleFile("semseg", reader.semseg_candidates(sample_id), ("semseg",), reader.read_semseg)
            )
        if "human_parts" in self.tasks:
            files.append(
                SampleFile("human_parts", (reader.parts_path(sample_id),), ("human_parts",), parts_shape)
            )
        if "sal" in self.tasks:
            files.append(SampleFile("sal", (reader.sal_path(sample_id),), ("sal",), read_gray01))
        if "normals" in self.tasks:
            files.append(
                SampleFile("normals", (reader.normals_path(sample_id),), ("normals",), read_normals_png)
            )
        map_tasks = tuple(t for t in self.tasks if t in ("normals", "edge"))
        if map_tasks:
            files.append(
                SampleFile("label_map", (reader.label_map_path(sample_id),), map_tasks, reader.read_label_map)
            )
        return files
