"""The LightningCLI part of the command line (``mtlora.cli`` dispatches to it).

``mtlora fit|validate|test|predict --config X`` are Lightning's; ``summary`` (and the other
extra subcommands) are methods of :class:`MTLoRATrainer`, so they receive the same instantiated
model and DataModule as ``fit`` does.  Tasks are declared once, on the DataModule, and linked
into the model.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mtlora.callbacks import ResultsWriter
from mtlora.checkpointing import checkpoint_hparams_for_cli, prepare_trainer
from mtlora.cli import EXTRA_SUBCOMMANDS, OFFLINE_SUBCOMMANDS
from mtlora.data import MultiTaskDataModule
from mtlora.module import MultiTaskModule
from mtlora.trainer import MTLoRATrainer


class MTLoRACLI(LightningCLI):
    """LightningCLI with task linking, default CSV logging and extra subcommands."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **EXTRA_SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task_channels", "model.task_channels", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size", apply_on="instantiate")
        parser.link_arguments("data.img_size", "model.encoder.img_size", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's hook: build the model from ``--ckpt_path``'s hyper-parameters.

        Replaced so the file is read safely with named errors and ``--weights_only``, and the
        config options the checkpoint overrides are listed (see checkpoint_hparams_for_cli).
        """
        subcommand = self.config.get("subcommand")
        run = self.config[subcommand] if subcommand else None
        path = run.get("ckpt_path") if run is not None else None
        if not path or path in ("last", "best", "hpc") or str(path).startswith("registry:"):
            return
        model = run.get("model")
        hparams = checkpoint_hparams_for_cli(
            path,
            model.as_dict() if model is not None else {},
            weights_only=run.get("weights_only") is not False,
        )
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self.subcommand in OFFLINE_SUBCOMMANDS:
            config.model.encoder.pretrained = None
        if self.subcommand == "predict" and config.get("return_predictions") is None:
            # panels are written as batches finish; keeping every full-resolution output in
            # memory (Lightning's default) would not fit a whole validation split
            config.return_predictions = False

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        # atomic checkpoint writes, weights-only loads, `fit --ckpt_path last` across logger versions
        prepare_trainer(trainer, self.subcommand, self.config_init.get(self.subcommand))
        if self.subcommand in ("fit", "validate", "test"):
            trainer.callbacks.append(ResultsWriter())
            from mtlora.wandb_callback import prepare_wandb  # no-op unless a WandbLogger is configured

            prepare_wandb(trainer, self.model, self.datamodule, self.subcommand)
        if self.subcommand == "predict" and not any(
            isinstance(c, BasePredictionWriter) for c in trainer.callbacks
        ):
            from mtlora.predict_writer import PredictionPanelWriter

            trainer.callbacks.append(PredictionPanelWriter())
        return trainer


def build_cli(args: list[str]) -> MTLoRACLI:
    """Parse ``args`` and run the Lightning subcommand (or extra subcommand) they name."""
    return MTLoRACLI(
        MultiTaskModule,
        MultiTaskDataModule,
        subclass_mode_data=True,
        trainer_class=MTLoRATrainer,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs"},
            },
        },
        parser_kwargs={"default_env": False},
        args=args,
    )
