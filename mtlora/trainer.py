"""Trainer subclass whose extra methods are the CLI's extra subcommands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

log = logging.getLogger(__name__)


class MTLoRATrainer(Trainer):
    """Lightning's Trainer plus ``summary`` (and the other library subcommands)."""

    def summary(self, model: LightningModule, datamodule: LightningDataModule | None = None,
                macs: bool = True, json_out: str | None = None) -> dict:
        """Print total/trainable parameters (encoder, decoders) and GMACs per task.

        Args:
            macs: also count multiply-accumulates of one image (a forward pass on CPU).
            json_out: also write the numbers to this JSON file.
        """
        from mtlora.summary import summary_table

        img_size = model.model.encoder_config.img_size
        text, result = summary_table(model.model, img_size, with_macs=macs)
        print(text)
        if json_out:
            Path(json_out).write_text(json.dumps(result, indent=2))
        return result
