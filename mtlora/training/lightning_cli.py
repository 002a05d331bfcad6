"""The LightningCLI part of the command line (``mtlora.cli`` dispatches to it).

``mtlora fit|validate|test|predict --config X`` are Lightning's; ``summary`` (and the other
extra subcommands) are methods of :class:`MTLoRATrainer`, so they receive the same instantiated
model and DataModule as ``fit`` does.  Tasks are declared once, on the DataModule, and linked
into the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mtlora.cli import EXTRA_SUBCOMMANDS, OFFLINE_SUBCOMMANDS
from mtlora.data import MultiTaskDataModule
from mtlora.training.callbacks import ResultsWriter, run_dir
from mtlora.training.checkpointing import checkpoint_hparams_for_cli, prepare_trainer
from mtlora.training.commands import MTLoRATrainer
from mtlora.training.module import MultiTaskModule
from mtlora.training.resume import prepare_resume

LIMIT_OPTIONS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


class MTLoRACLI(LightningCLI):
    """LightningCLI with task linking, default CSV logging and extra subcommands."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **EXTRA_SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task_channels", "model.task_channels", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size", apply_on="instantiate")
        parser.link_arguments("data.img_size", "model.encoder.img_size", apply_on="instantiate")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # ResultsWriter prints the metrics table: once is enough
            parser.set_defaults(verbose=False)
        if subcommand == "predict":  # --output.out_dir / .panels / .maps / .max_images
            from mtlora.training.predict_writer import PredictionPanelWriter

            parser.add_class_arguments(PredictionPanelWriter, "output")
        return parser

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
        data = run.get("data")
        if subcommand == "predict" and data is not None and data.get("init_args") is not None:
            fill_data_options_from_checkpoint(data.init_args, hparams)
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

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        if subcommand in ("fit", "validate", "test", "predict") and self.trainer.is_global_zero:
            print(where_things_went(self.trainer, subcommand), flush=True)

    def instantiate_trainer(self, **kwargs: Any):
        limits = one_batch_limits(self._get(self.config_init, "trainer", default={}))
        trainer = super().instantiate_trainer(**{**limits, **kwargs})
        # atomic checkpoint writes, weights-only loads
        prepare_trainer(trainer, self.subcommand, self.config_init.get(self.subcommand))
        # a recent last.ckpt at all times, `--ckpt_path last`, one folder per run, config drift
        prepare_resume(
            trainer,
            self.subcommand,
            self.config_init.get(self.subcommand),
            self.config.get(self.subcommand),
            self.model,
        )
        if self.subcommand in ("fit", "validate", "test"):
            trainer.callbacks.append(ResultsWriter())
            from mtlora.training.wandb_callback import (
                prepare_wandb,  # no-op unless a WandbLogger is configured
            )

            prepare_wandb(trainer, self.model, self.datamodule, self.subcommand)
        if self.subcommand == "predict" and not any(
            isinstance(c, BasePredictionWriter) for c in trainer.callbacks
        ):
            trainer.callbacks.append(self.config_init["predict"]["output"])
        return trainer


def fill_data_options_from_checkpoint(data_args: Any, hparams: dict[str, Any]) -> None:
    """Data options left unset (None: ``ImageFolderDataModule``'s tasks, class count, input size)
    take the checkpoint's values, so predicting on a folder needs only the checkpoint."""
    channels = hparams.get("task_channels") or {}
    encoder = hparams.get("encoder") or {}
    known = {
        "tasks": list(channels) or None,
        "semseg_classes": channels.get("semseg"),
        "img_size": encoder.get("img_size") if isinstance(encoder, dict) else None,
    }
    for key, value in known.items():
        if key in data_args and data_args[key] is None and value is not None:
            data_args[key] = value


def one_batch_limits(trainer_config: Mapping[str, Any]) -> dict[str, int]:
    """Make ``--trainer.limit_val_batches 1`` (and the other ``limit_*``) mean one batch.

    The parser turns these options into floats, so a 1 arrives as 1.0, which Lightning reads as
    100 % of the batches.  All batches is the default already (leave the option unset), so an
    explicit 1 is taken to mean what it says; Lightning then logs that one batch is used.
    Returns the Trainer arguments to replace.
    """
    return {
        key: 1
        for key in LIMIT_OPTIONS
        if isinstance(trainer_config.get(key), float) and trainer_config.get(key) == 1.0
    }


def where_things_went(trainer: Trainer, subcommand: str) -> str:
    """The closing lines of a run: run folder, checkpoint(s), results file(s), predictions."""
    lines = [f"run folder:      {run_dir(trainer)}"]
    if subcommand == "fit":
        callback = trainer.checkpoint_callback
        if callback is None:
            lines.append("checkpoint:      none (checkpointing is disabled)")
        else:
            best, score = callback.best_model_path, callback.best_model_score
            label = "best checkpoint:" if callback.monitor else "checkpoint:     "
            detail = (
                f" ({callback.monitor}={float(score):.4g})" if callback.monitor and score is not None else ""
            )
            lines.append(f"{label} {best or 'none written'}{detail}")
            if callback.last_model_path and callback.last_model_path != best:
                lines.append(f"last checkpoint: {callback.last_model_path}")
    else:
        lines.append(f"checkpoint:      {trainer.ckpt_path or 'none (weights as configured)'}")
    for callback in trainer.callbacks:
        if isinstance(callback, ResultsWriter):
            lines += [f"results:         {path}" for path in callback.paths.values()]
        out_dir = getattr(callback, "out_dir", None)
        if isinstance(callback, BasePredictionWriter) and out_dir is not None:
            lines.append(f"predictions:     {out_dir}")
    return "\n".join(lines)


def build_cli(args: list[str] | None = None) -> MTLoRACLI:
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
