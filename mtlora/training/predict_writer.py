"""``mtlora predict`` output: per image a PNG panel and one machine-readable file per task.

Layout of the output folder (``<id>`` is the sample id; for an image folder the file name with
its extension, so ``x.jpg`` and ``x.png`` never overwrite each other):

* ``<id>.png``: the panel (input, predictions, ground truth when known, with legends and colour bars);
* ``<task>/<id>.png`` for segmentation-kind tasks (:mod:`mtlora.tasks`): class ids as a palette PNG (pixel value = class id,
  shown in the panels' colours; 16-bit grey above 256 classes);
* ``<task>/<id>.npy`` otherwise, float32: binary tasks (sal, edge) probabilities ``(H, W)`` in
  0..1, depth ``(H, W)`` in the training data's unit, normals unit vectors ``(H, W, 3)``.

Per-task files have the original image size when the batch says what it was (``meta["size"]``;
image folders also say which part of the padded input is the image, ``meta["content"]``), else
the network's.  Every file is written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from mtlora.io.atomic import write_atomic
from mtlora.tasks import task_info
from mtlora.training.callbacks import run_dir
from mtlora.visualize import decode_prediction, palette, save_panel

log = logging.getLogger(__name__)


def save_task_output(out_dir: Path, sample_id: str, task: str, value: np.ndarray) -> Path:
    """Write one decoded map (see :func:`~mtlora.visualize.decode_prediction`) in its file format."""
    folder = out_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    if task_info(task).kind == "segmentation":
        path = folder / f"{sample_id}.png"
        if value.max(initial=0) < 256:
            image = Image.fromarray(value.astype(np.uint8))
            image.putpalette(palette(256).tobytes())  # "L" -> "P": ids stay the pixel values
        else:
            image = Image.fromarray(value.astype(np.uint16))
        write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
        return path
    path = folder / f"{sample_id}.npy"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the name
            np.save(f, value.astype(np.float32), allow_pickle=False)

    write_atomic(path, write)
    return path


class PredictionPanelWriter(BasePredictionWriter):
    """Write panels and per-task outputs for every predicted image, as batches finish.

    Set from the command line as ``--output.<option>`` (``mtlora predict`` only).

    Args:
        out_dir: folder for the outputs (default: ``predictions/`` in the run's log folder).
        panels: write the PNG panels (off: only the per-task files, much faster).
        maps: write the per-task files (label PNGs, ``.npy`` arrays).
        max_images: stop after this many images (None: all).
    """

    def __init__(
        self,
        out_dir: str | None = None,
        panels: bool = True,
        maps: bool = True,
        max_images: int | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir) if out_dir else None
        self.panels, self.maps, self.max_images = panels, maps, max_images
        self.written = 0
        self.skipped: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.out_dir is None:
            self.out_dir = run_dir(trainer) / "predictions"

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        outputs: Mapping[str, Tensor] = prediction["outputs"]
        meta = batch.get("meta") or {}
        count = len(batch["image"])
        ids = meta.get("id") or [f"{trainer.global_rank}_{batch_idx}_{i}" for i in range(count)]
        errors = meta.get("error") or [None] * count
        sizes = meta.get("size") or [None] * count
        contents = meta.get("content") or [None] * count
        for i, sample_id in enumerate(ids):
            if errors[i]:
                log.warning("skipped %s", errors[i])
                print(f"skipped: {errors[i]}")
                self.skipped.append(errors[i])
                continue
            if self.max_images is not None and self.written >= self.max_images:
                return
            h, w = contents[i] or batch["image"].shape[-2:]
            preds = {task: value[i][:, :h, :w] for task, value in outputs.items()}
            if self.panels:
                targets = {task: batch[task][i] for task in outputs if task in batch}
                save_panel(
                    self.out_dir / f"{sample_id}.png",
                    batch["image"][i][:, :h, :w],
                    preds,
                    targets or None,
                    title=str(sample_id),
                )
            if self.maps:
                size = tuple(int(v) for v in sizes[i]) if sizes[i] else None
                for task, logits in preds.items():
                    save_task_output(
                        self.out_dir, str(sample_id), task, decode_prediction(task, logits, size)
                    )
            self.written += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        what = " + ".join(n for n, on in (("panels", self.panels), ("per-task outputs", self.maps)) if on)
        message = f"wrote {what or 'nothing'} for {self.written} images to {self.out_dir}"
        if self.skipped:
            message += f"; skipped {len(self.skipped)} unreadable files (listed above)"
        log.info(message)
        print(message)
