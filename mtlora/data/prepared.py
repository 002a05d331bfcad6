"""Prepared data sets: a raw PASCAL_MT / NYUD folder converted once into LitData chunks.

Decoding the raw folder is the expensive half of the training pipeline (JPEG, PNG label maps,
and above all ``scipy.io.loadmat`` of the PASCAL-Part and LabelMap ``.mat`` structs, followed by
the edge thinning).  ``mtlora data prepare`` does that work once and writes, per split, a LitData
optimised data set (``<out>/<split>/``) that a local disk, a shared file system or object
storage (``s3://...``) can stream chunk by chunk.  Per sample it stores:

* ``image``: the image file's bytes as they are (JPEG/PNG), decoded by the same PIL code as the
  raw reader, so the pixels are identical;
* every label map (segmentation and binary tasks) already decoded (human parts from the ``.mat`` structs, edges and the
  normals-valid mask from the LabelMap), as raw ``uint8`` arrays (``label_format="raw"``) or as
  lossless PNG bytes (``"png"``: about 10x smaller, but each map costs a PNG decode);
* normals as their 8-bit code (``2 v / 255 - 1``, exactly what the PNG reader computes) plus the
  mask of zero (invalid) vectors (``<task>_zero``) when that reproduces them bit for bit, else
  as float32;
* depth as float32.

A JSON manifest (:data:`MANIFEST`) records the source folder, its file count and bytes, the
data module, tasks, splits with their sample ids in stored order, and the library versions.  It
is written last and atomically, so a folder without it is an unfinished preparation, never
mistaken for a finished one.  :func:`load_manifest` is how a data module recognises a prepared
root (local path or any URI LitData streams from).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mtlora.data.io import DataError, read_rgb
from mtlora.tasks import TASKS, task_info

__all__ = [
    "MANIFEST",
    "PreparedReader",
    "SampleEncoder",
    "check_manifest",
    "decode_prepared",
    "encode_sample",
    "load_manifest",
    "prepare_dataset",
    "prepared_split",
]

MANIFEST = "mtlora_prepared.json"
_PREPARING = ".mtlora_preparing"
FORMAT = "mtlora-prepared"
FORMAT_VERSION = 1
LABEL_FORMATS = ("raw", "png")
_UINT8_LABEL_KINDS = ("segmentation", "binary")  # task kinds stored as uint8 label maps


def is_uri(root: str) -> bool:
    """True for a remote location such as ``s3://bucket/prefix`` (anything with a scheme)."""
    return "://" in str(root) and not str(root).startswith("file://")


def _join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def load_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a prepared data set at ``root``, or None when ``root`` is not one."""
    root = str(root)
    if is_uri(root):
        from litdata.streaming.downloader import get_downloader

        buffer = io.BytesIO()
        try:
            with tempfile.TemporaryDirectory() as cache:
                get_downloader(root, cache, []).download_fileobj(_join(root, MANIFEST), buffer)
        except Exception:  # noqa: BLE001 - missing object / no access: not a prepared root
            return None
        text = buffer.getvalue().decode()
        where = _join(root, MANIFEST)
    else:
        path = Path(root.removeprefix("file://")).expanduser() / MANIFEST
        if not path.is_file():
            if (path.parent / _PREPARING).exists():
                raise DataError(
                    f"{path.parent} is an unfinished preparation (interrupted `mtlora data prepare`); "
                    "run it again"
                )
            return None
        text, where = path.read_text(), str(path)
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise DataError(f"{where}: prepared-data manifest is not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: not an mtlora prepared-data manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{where}: prepared with format version {manifest.get('format_version')}, this mtlora "
            f"reads version {FORMAT_VERSION}; run `mtlora data prepare` again"
        )
    return manifest


def check_manifest(manifest: dict[str, Any], root: str, datamodule: str, tasks: list[str]) -> None:
    """Raise :class:`DataError` when a prepared data set cannot serve ``datamodule`` / ``tasks``."""
    if manifest.get("datamodule") != datamodule:
        raise DataError(
            f"data.root {root} was prepared for {manifest.get('datamodule')}, not {datamodule}; "
            "use the matching data class_path or prepare the folder again"
        )
    missing = [task for task in tasks if task not in manifest.get("tasks", [])]
    if missing:
        raise DataError(
            f"data.root {root} was prepared with tasks {manifest.get('tasks')}, it lacks {missing}; "
            "remove them from data.tasks or run `mtlora data prepare` with them"
        )


def prepared_split(
    manifest: dict[str, Any], root: str, split: str, tasks: list[str], compact_normals: bool = False
) -> tuple[list[str], PreparedReader]:
    """Sample ids and reader of one split of a prepared data set (see :func:`decode_prepared`)."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(f"data.root {root} has no prepared split {split!r}; prepared: {sorted(splits)}")
    split_uri = (
        _join(root, split) if is_uri(root) else str(Path(root.removeprefix("file://")).expanduser() / split)
    )
    ids = list(splits[split]["ids"])
    return ids, PreparedReader(split_uri, ids, tasks, compact_normals)


# --- encoding ---------------------------------------------------------------------------------
def _png_bytes(array: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise DataError(f"cannot PNG-encode a {array.dtype} array of shape {array.shape}")
    return encoded.tobytes()


def _png_array(data: Any) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def _decode_normal_code(code: np.ndarray, zero: np.ndarray) -> np.ndarray:
    normals = code.astype(np.float32) * (2.0 / 255.0) - 1.0  # the arithmetic of read_normals_png
    normals[zero.astype(bool)] = 0.0
    return normals


def encode_sample(
    sample_id: str, image_bytes: bytes, decoded: dict[str, np.ndarray], label_format: str = "raw"
) -> dict[str, Any]:
    """One decoded sample -> the item stored in the chunks (see the module docstring)."""
    item: dict[str, Any] = {"id": sample_id, "image": image_bytes}
    for task, value in decoded.items():
        if task == "image":
            continue
        kind = task_info(task).kind if task in TASKS else None
        if kind in _UINT8_LABEL_KINDS:
            value = np.ascontiguousarray(value, dtype=np.uint8)
            item[task] = _png_bytes(value) if label_format == "png" else value
        elif kind == "normals":
            normals = np.ascontiguousarray(value, dtype=np.float32)
            zero = (normals == 0).all(axis=2).astype(np.uint8)
            code = np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
            if np.array_equal(_decode_normal_code(code, zero), normals):
                item[task] = code
                item[f"{task}_zero"] = zero
            else:
                item[task] = normals
                item[f"{task}_zero"] = np.zeros((0, 0), dtype=np.uint8)
        elif kind == "depth":
            item[task] = np.ascontiguousarray(value, dtype=np.float32)
        else:
            raise DataError(f"sample {sample_id}: no prepared encoding for task {task!r}")
    return item


def decode_prepared(
    item: dict[str, Any], tasks: list[str], compact_normals: bool = False
) -> dict[str, np.ndarray]:
    """A stored item -> the decoded sample the raw reader returns (bit-identical).

    With ``compact_normals`` normals stored as 8-bit codes stay codes (``uint8`` normals plus a
    ``normals_zero`` mask): the device-side augmentation decodes them after the transfer, which
    saves the worker a float conversion and ships a quarter of the bytes.
    """
    name = f"prepared sample {item.get('id', '?')}"
    sample = {"image": read_rgb(io.BytesIO(bytes(item["image"])), name=name)}
    for task in tasks:
        value, kind = item[task], task_info(task).kind
        if kind in _UINT8_LABEL_KINDS:
            sample[task] = value if isinstance(value, np.ndarray) else _png_array(value)
        elif kind == "normals":
            zero = item[f"{task}_zero"]
            if value.dtype == np.float32:
                sample[task] = value
            elif compact_normals:
                sample[task], sample[f"{task}_zero"] = value, zero
            else:
                sample[task] = _decode_normal_code(value, zero)
        else:
            sample[task] = value
    return sample


def _image_path(reader: Any, sample_id: str) -> Path:
    if hasattr(reader, "image_path"):
        return reader.image_path(sample_id)
    return reader.path("images", sample_id)


class SampleEncoder:
    """Picklable ``optimize`` function: sample id -> stored item (runs in the preparing workers)."""

    def __init__(self, reader: Any, label_format: str) -> None:
        self.reader = reader
        self.label_format = label_format

    def __call__(self, sample_id: str) -> dict[str, Any]:
        decoded = self.reader(sample_id)
        image_bytes = _image_path(self.reader, sample_id).read_bytes()
        return encode_sample(sample_id, image_bytes, decoded, self.label_format)


# --- reading ----------------------------------------------------------------------------------
class PreparedReader:
    """Picklable reader of one prepared split: ``read(sample_id) -> decoded sample``.

    The LitData data set is opened lazily in the process that reads (each DataLoader worker
    opens its own), and any index can be read: the training sampler decides the order and the
    shard of each rank, so resuming and DDP work as with the raw folder.  Remote chunks are
    downloaded on first use into LitData's cache.
    """

    def __init__(
        self, split_uri: str, ids: list[str], tasks: list[str], compact_normals: bool = False
    ) -> None:
        self.split_uri = split_uri
        self.compact_normals = compact_normals
        self.index = {sample_id: position for position, sample_id in enumerate(ids)}
        self.tasks = list(tasks)
        self._dataset: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    def __call__(self, sample_id: str) -> dict[str, np.ndarray]:
        if self._dataset is None:
            from litdata import StreamingDataset

            self._dataset = StreamingDataset(self.split_uri)
        if sample_id not in self.index:
            raise DataError(f"{self.split_uri}: no prepared sample {sample_id!r}")
        item = self._dataset[self.index[sample_id]]
        if item["id"] != sample_id:
            raise DataError(
                f"{self.split_uri}: stored sample {self.index[sample_id]} is {item['id']!r}, the "
                f"manifest says {sample_id!r}; the preparation is inconsistent, prepare it again"
            )
        return decode_prepared(item, self.tasks, self.compact_normals)


# --- preparing --------------------------------------------------------------------------------
def _source_stats(root: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size


def prepare_dataset(
    datamodule: Any,
    out: str | os.PathLike,
    splits: list[str] | None = None,
    num_workers: int = 1,
    label_format: str = "raw",
    chunk_bytes: str = "64MB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the raw folder of ``datamodule`` into a prepared data set at ``out``.

    The tasks are those of the data module (its config).  Returns the manifest.  An existing
    finished preparation is only replaced with ``overwrite=True``; an unfinished one (no
    manifest) is always redone from scratch.
    """
    import litdata

    import mtlora
    from mtlora.io.atomic import write_json_atomic

    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if getattr(datamodule, "prepared", None) is not None:
        raise DataError(f"data.root {datamodule.data_uri} is already a prepared data set")
    out = Path(out).expanduser().resolve()
    finished = (out / MANIFEST).is_file()
    if finished and not overwrite:
        raise DataError(f"{out} already holds a finished preparation; pass --overwrite to replace it")
    source = Path(datamodule.root).resolve()
    if out == source or source in out.parents or out in source.parents:
        raise DataError(f"--out {out} and the raw data folder {source} must not contain each other")
    datamodule.check_root()
    if out.exists() and any(out.iterdir()):
        if not finished and not (out / _PREPARING).exists():
            raise DataError(f"--out {out} exists and is not a preparation; give an empty or new folder")
        shutil.rmtree(out)  # an unfinished or replaced preparation
    out.mkdir(parents=True, exist_ok=True)
    (out / _PREPARING).touch()  # marks the folder as ours until the manifest replaces it
    files, size = _source_stats(source)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "datamodule": type(datamodule).__name__,
        "source": str(source),
        "source_files": files,
        "source_bytes": size,
        "tasks": list(datamodule.tasks),
        "label_format": label_format,
        "mtlora_version": getattr(mtlora, "__version__", "unknown"),
        "litdata_version": litdata.__version__,
        "splits": {},
    }
    if hasattr(datamodule, "layout"):
        manifest["nyud_layout"] = datamodule.layout
    # litdata sets the start method process-wide (spawn by default, which re-imports everything in
    # every worker); fork where the platform has it, and the caller's setting is restored after
    previous = multiprocessing.get_start_method(allow_none=True)
    method = "fork" if sys.platform == "linux" else "spawn"
    try:
        for split in splits or datamodule.data_splits():
            ids = datamodule.split_ids(split)
            litdata.optimize(
                fn=SampleEncoder(datamodule.make_reader(split), label_format),
                inputs=ids,
                output_dir=str(out / split),
                chunk_bytes=chunk_bytes,
                num_workers=max(1, int(num_workers)),
                keep_data_ordered=True,
                mode="overwrite",
                start_method=method,
                verbose=True,
            )
            manifest["splits"][split] = {"count": len(ids), "ids": ids}
    finally:
        multiprocessing.set_start_method(previous, force=True)
    write_json_atomic(out / MANIFEST, manifest)  # last: marks the preparation as finished
    (out / _PREPARING).unlink()
    return manifest
