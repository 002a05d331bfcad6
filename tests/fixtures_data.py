"""Fake data folders in the exact on-disk formats of PASCAL_MT and NYUD (both layouts).

The writers produce real files (JPEG/PNG via PIL, MATLAB files via scipy.io.savemat with the
PASCAL-Part struct layout and field order, .npy arrays) with small, known contents, and return
what a correct reader must decode, so tests can compare against it.  Import the functions (or
the pytest fixtures at the bottom) from test files:

    from fixtures_data import write_fake_pascal
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

# --- PASCAL-Part struct layout (field order matters: loaders index fields by position) ------
_ANNO_DTYPE = [("imname", "O"), ("objects", "O")]
_OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_PART_DTYPE = [("part_name", "O"), ("mask", "O")]

# Context classes used by the fake LabelMaps: valid for normals ('wall', 'tvmonitor') or not.
CONTEXT_WALL = 440  # "wall": also an NYU class -> normals valid
CONTEXT_TV = 427  # 'tvmonitor': explicitly valid
CONTEXT_AEROPLANE = 2  # not an NYU class -> normals invalid

VOC_PALETTE = np.zeros((256, 3), dtype=np.uint8)
VOC_PALETTE[:21] = np.random.default_rng(7).integers(0, 256, size=(21, 3))
VOC_PALETTE[255] = (224, 224, 192)


def part_struct(parts: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """A 1 x P struct array of parts (name, mask)."""
    array = np.zeros((1, len(parts)), dtype=_PART_DTYPE)
    for index, (name, mask) in enumerate(parts):
        array[0, index] = (name, mask.astype(np.uint8))
    return array


def write_part_mat(path: Path, imname: str, objects: list[tuple[str, int, np.ndarray, np.ndarray]]) -> None:
    """Write a PASCAL-Part ``anno`` file; objects are (class, class_ind, mask, parts array)."""
    objs = np.zeros((1, len(objects)), dtype=_OBJECT_DTYPE)
    for index, (name, class_ind, mask, parts) in enumerate(objects):
        objs[0, index] = (name, np.array([[class_ind]], dtype=np.uint8), mask.astype(np.uint8), parts)
    anno = np.zeros((1, 1), dtype=_ANNO_DTYPE)
    anno[0, 0] = (imname, objs)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"anno": anno})


def positional_parts(path: Path) -> list[tuple[int, list[str]]]:
    """Read a part file back the way the official loader does (by field position)."""
    objects = scipy.io.loadmat(path)["anno"][0][0][1][0]
    result = []
    for obj in objects:
        parts = obj[3]
        names = [str(part[0][0]) for part in parts[0]] if parts.size else []
        result.append((obj[1].item(), names))
    return result


@dataclass
class FakePascal:
    """What was written, and what a correct reader must decode."""

    root: Path
    train: list[str]
    val: list[str]
    size: tuple[int, int]
    semseg: dict[str, np.ndarray] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    sal: dict[str, np.ndarray] = field(default_factory=dict)
    normals: dict[str, np.ndarray] = field(default_factory=dict)
    label_map: dict[str, np.ndarray] = field(default_factory=dict)
    voc12_ids: list[str] = field(default_factory=list)


def _save_png(
    path: Path, array: np.ndarray, mode: str | None = None, palette: np.ndarray | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(palette.reshape(-1).tolist())
    image.save(path)


def _pattern_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 30, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_fake_pascal(
    root: Path,
    n_train: int = 3,
    n_val: int = 2,
    size: tuple[int, int] = (24, 32),
    parts_cache: bool = False,
    seed: int = 0,
) -> FakePascal:
    """Write a PASCAL_MT folder with ``n_train`` + ``n_val`` samples of ``size`` = (h, w).

    Sample kinds (cycling over the ids): 0 = person with parts + person without parts (0x0
    array) + person with a 1x0 part struct + a dog with parts; 1 = only a non-person object;
    2 = only a person without parts; every id has VOC12 *and* pascal-context semseg when its
    index is even (VOC12 must win), only pascal-context otherwise.
    """
    root = Path(root)
    h, w = size
    rng = np.random.default_rng(seed)
    train = [f"2008_{index:06d}" for index in range(n_train)]
    val = [f"2009_{index:06d}" for index in range(n_val)]
    fake = FakePascal(root=root, train=train, val=val, size=size)
    (root / "ImageSets" / "Context").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("\n".join(val) + "\n")
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)

    cache: dict[str, dict[str, list[int]]] = {"train": {}, "val": {}}
    for split, ids in (("train", train), ("val", val)):
        for index, sample_id in enumerate(ids):
            Image.fromarray(_pattern_image(rng, h, w)).save(
                root / "JPEGImages" / f"{sample_id}.jpg", quality=95
            )

            # semseg: plain 8-bit pascal-context labels, plus a palette VOC12 file for even indices.
            context = np.zeros((h, w), dtype=np.uint8)
            context[:, w // 4 : w // 2] = 5
            context[h // 2 :, w // 2 :] = 15
            context[0, :] = 255
            _save_png(root / "semseg" / "pascal-context" / f"{sample_id}.png", context, mode="L")
            expected = context
            if index % 2 == 0:
                voc = np.zeros((h, w), dtype=np.uint8)
                voc[h // 3 :, : w // 3] = 7
                voc[-1, :] = 255
                _save_png(root / "semseg" / "VOC12" / f"{sample_id}.png", voc, mode="P", palette=VOC_PALETTE)
                expected = voc
                fake.voc12_ids.append(sample_id)
            fake.semseg[sample_id] = expected

            # human parts
            kind = index % 3
            objects, parts_expected, categories = _part_objects(kind, h, w)
            write_part_mat(root / "human_parts" / f"{sample_id}.mat", sample_id, objects)
            fake.parts[sample_id] = parts_expected
            cache[split][sample_id] = categories

            # saliency: values straddling the 0.5 threshold (127 -> 0, 128 -> 1)
            sal = np.zeros((h, w), dtype=np.uint8)
            sal[:, : w // 4] = 127
            sal[:, w // 4 : w // 2] = 128
            sal[:, w // 2 :] = 255
            sal[h - 2 :, :] = 0
            _save_png(root / "sal_distill" / f"{sample_id}.png", sal, mode="L")
            fake.sal[sample_id] = (sal >= 128).astype(np.uint8)

            # context LabelMap: wall (valid) left, aeroplane (invalid) right, tv (valid) bottom-right
            label_map = np.full((h, w), CONTEXT_WALL, dtype=np.uint16)
            label_map[:, w // 2 :] = CONTEXT_AEROPLANE
            label_map[3 * h // 4 :, 3 * w // 4 :] = CONTEXT_TV
            (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(
                root / "pascal-context" / "trainval" / f"{sample_id}.mat", {"LabelMap": label_map}
            )
            fake.label_map[sample_id] = label_map

            # normals: a constant RGB code; masked to valid context classes by the reader
            code = np.array([200, 64, 230], dtype=np.uint8)
            _save_png(
                root / "normals_distill" / f"{sample_id}.png", np.broadcast_to(code, (h, w, 3)).copy(), "RGB"
            )
            normals = np.broadcast_to(2.0 * code.astype(np.float32) / 255.0 - 1.0, (h, w, 3)).copy()
            valid = np.isin(label_map, [CONTEXT_WALL, CONTEXT_TV])
            normals[~valid] = 0.0
            fake.normals[sample_id] = normals

    if parts_cache:
        (root / "ImageSets" / "Parts").mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            (root / "ImageSets" / "Parts" / f"{split}.txt").write_text(json.dumps(cache[split]))
    return fake


def _part_objects(kind: int, h: int, w: int) -> tuple[list, np.ndarray, list[int]]:
    """Objects of one part file, the expected 7-class map and the per-object categories."""

    def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[r0:r1, c0:c1] = 1
        return mask

    expected = np.full((h, w), 255, dtype=np.uint8)
    if kind == 0:
        person = box(0, h, 0, w // 2)
        parts = part_struct(
            [
                ("hair", box(0, 2, 0, w // 2)),
                ("head", box(2, 5, 0, w // 2)),
                ("torso", box(5, 10, 0, w // 2)),
                ("llarm", box(10, 12, 0, w // 4)),
                ("ruleg", box(12, 15, 0, w // 2)),
                ("lfoot", box(15, 17, 0, w // 2)),
            ]
        )
        dog_parts = part_struct([("head", box(0, 4, w // 2, w))])  # non-person parts: never painted
        objects = [
            ("person", 15, person, parts),
            ("person", 15, box(h - 4, h, w // 2, w), np.zeros((0, 0))),  # person without parts, 0x0
            ("person", 15, box(h - 6, h - 4, w // 2, w), np.zeros((1, 0), dtype=_PART_DTYPE)),  # 1x0 struct
            ("dog", 12, box(0, 4, w // 2, w), dog_parts),
        ]
        expected[:] = 0
        expected[0:5, 0 : w // 2] = 1
        expected[5:10, 0 : w // 2] = 2
        expected[10:12, 0 : w // 4] = 4
        expected[12:15, 0 : w // 2] = 5
        expected[15:17, 0 : w // 2] = 6
        return objects, expected, [15, 15, 15, 12]
    if kind == 1:
        return [("cat", 8, box(2, 8, 2, 8), np.zeros((0, 0)))], expected, [8]
    return [("person", 15, box(2, 8, 2, 8), np.zeros((0, 0)))], expected, [15]


# --- NYUD ------------------------------------------------------------------------------------
@dataclass
class FakeNYUD:
    root: Path
    layout: str
    train: list[str]
    val: list[str]
    size: tuple[int, int]
    semseg: dict[str, np.ndarray] = field(default_factory=dict)
    depth: dict[str, np.ndarray] = field(default_factory=dict)
    normals: dict[str, np.ndarray] = field(default_factory=dict)
    edge: dict[str, np.ndarray] = field(default_factory=dict)


def write_fake_nyud(
    root: Path,
    layout: str = "NYUD_MT",
    n_train: int = 3,
    n_val: int = 2,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
) -> FakeNYUD:
    """Write a NYUD folder in the ``NYUD_MT`` (.jpg/.npy) or ``NYUDv2`` (.png) layout."""
    if layout not in ("NYUD_MT", "NYUDv2"):
        raise ValueError(layout)
    root = Path(root)
    h, w = size
    rng = np.random.default_rng(seed)
    train = [f"{index:04d}" for index in range(n_train)]
    val = [f"{1000 + index:04d}" for index in range(n_val)]
    fake = FakeNYUD(root=root, layout=layout, train=train, val=val, size=size)
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("\n".join(train) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val) + "\n")
    for sample_id in train + val:
        image = _pattern_image(rng, h, w)
        if layout == "NYUD_MT":
            Image.fromarray(image).save(root / "images" / f"{sample_id}.jpg", quality=95)
        else:
            Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        raw = np.zeros((h, w), dtype=np.uint8)  # 0 = unlabelled
        raw[:, w // 4 : w // 2] = 1
        raw[:, w // 2 :] = 40
        raw[h // 2 :, : w // 4] = 17
        _save_png(root / "segmentation" / f"{sample_id}.png", raw, mode="L")
        semseg = raw.astype(np.int64) - 1
        semseg[raw == 0] = 255
        fake.semseg[sample_id] = semseg.astype(np.uint8)

        depth = np.linspace(1.0, 5.0, w, dtype=np.float32)[None].repeat(h, 0)
        depth[0, 0] = 0.0  # invalid
        np.save(root / "depth" / f"{sample_id}.npy", depth)
        fake.depth[sample_id] = depth

        normals = np.zeros((h, w, 3), dtype=np.float32)
        normals[:, : w // 2] = (0.0, 0.0, 1.0)
        normals[:, w // 2 :] = (0.6, -0.8, 0.0)
        edge = np.zeros((h, w), dtype=np.uint8)
        edge[:, w // 2] = 1
        if layout == "NYUD_MT":
            np.save(root / "normals" / f"{sample_id}.npy", normals)
            np.save(root / "edge" / f"{sample_id}.npy", edge.astype(np.float32))
            fake.normals[sample_id] = normals
        else:
            code = np.round((normals + 1.0) * 127.5).astype(np.uint8)
            _save_png(root / "normals" / f"{sample_id}.png", code, "RGB")
            _save_png(root / "edge" / f"{sample_id}.png", edge * 255, "L")
            fake.normals[sample_id] = code.astype(np.float32) * 2.0 / 255.0 - 1.0
        fake.edge[sample_id] = edge
    return fake


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file and folder under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def fake_pascal(tmp_path: Path) -> FakePascal:
    return write_fake_pascal(tmp_path / "PASCAL_MT")


@pytest.fixture
def fake_nyud(tmp_path: Path) -> FakeNYUD:
    return write_fake_nyud(tmp_path / "NYUD_MT")
