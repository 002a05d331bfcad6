"""``mtlora predict`` output: one PNG panel per image (prediction, and ground truth when known)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from mtlora.callbacks import run_dir
from mtlora.visualize import save_panel

log = logging.getLogger(__name__)


class PredictionPanelWriter(BasePredictionWriter):
    """Write ``<run dir>/predictions/<id>.png`` for every predicted image, as batches finish.

    Args:
        out_dir: folder for the panels (default: ``predictions/`` in the run's log folder).
        max_images: stop writing after this many panels (None: all).
    """

    def __init__(self, out_dir: str | None = None, max_images: int | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir) if out_dir else None
        self.max_images = max_images
        self.written = 0

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
        outputs = prediction["outputs"]
        meta = batch.get("meta") or {}
        ids = meta.get("id") or [f"{trainer.global_rank}_{batch_idx}_{i}" for i in range(len(batch["image"]))]
        for i, sample_id in enumerate(ids):
            if self.max_images is not None and self.written >= self.max_images:
                return
            preds = {task: value[i] for task, value in outputs.items()}
            targets = {task: batch[task][i] for task in outputs if task in batch}
            save_panel(
                str(self.out_dir / f"{sample_id}.png"),
                batch["image"][i],
                preds,
                targets or None,
                title=str(sample_id),
            )
            self.written += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log.info("wrote %d prediction panels to %s", self.written, self.out_dir)
        print(f"wrote {self.written} prediction panels to {self.out_dir}")
