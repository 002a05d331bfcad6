"""A callback that appends the ids of every training sample a process sees to ``<out_dir>/rank<r>.txt``.

Used through a config file in subprocess runs (``class_path: record_sample_ids.RecordSampleIds``
with ``tests/`` on ``PYTHONPATH``) to check that DDP ranks split an epoch without overlap.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class RecordSampleIds(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.txt", "a") as f:
            for sample_id in batch["meta"]["id"]:
                f.write(f"{trainer.current_epoch} {sample_id}\n")
