"""A callback that SIGKILLs its own process after a given optimizer step (resume tests).

Used through a config file in subprocess runs: ``class_path: kill_at_step.KillAtStep`` with
``tests/`` on ``PYTHONPATH``.  Deterministic, unlike polling the file system from outside.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """Send SIGKILL to this process at the end of the training batch that reached ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
