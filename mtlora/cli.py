"""Command line: LightningCLI with the library's extra subcommands.

``mtlora fit|validate|test|predict --config X`` are Lightning's; ``summary`` (and the other
extra subcommands) are methods of :class:`MTLoRATrainer`, so they receive the same instantiated
model and DataModule as ``fit`` does.  Tasks are declared once, on the DataModule, and linked
into the model.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mtlora.callbacks import ResultsWriter
from mtlora.checkpointing import checkpoint_hparams_for_cli, prepare_trainer
from mtlora.data import MultiTaskDataModule
from mtlora.module import MultiTaskModule
from mtlora.trainer import MTLoRATrainer

EXTRA_SUBCOMMANDS: dict[str, set[str]] = {
    "summary": {"model", "datamodule"},
    "similarity": {"model", "datamodule"},
    "bench": {"model", "datamodule"},
    "export": {"model", "datamodule"},
    "export_adapters": {"model", "datamodule"},
}
# extra subcommands that only inspect the model: no weight download, no data folder needed
# (bench times randomly initialised variants; export takes its weights from the checkpoint)
OFFLINE_SUBCOMMANDS = {"summary", "bench", "export", "export_adapters"}


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


def run_cli(args: list[str] | None = None) -> MTLoRACLI | None:
    """Run one command; ``args`` (without the program name) lets tests run it in-process."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["data"]:
        from mtlora.cli_data import data_main

        status = data_main(argv[1:])
        if status:
            raise SystemExit(status)
        return None
    if argv[:1] == ["edge_eval"]:  # scores saved edge maps: no model, no data module
        from mtlora.metrics.edge_bsds import edge_eval_main

        edge_eval_main(argv[1:])
        return None
    if argv[:1] == ["sweep"]:  # runs many fits in this process: not a LightningCLI subcommand itself
        from mtlora.sweep import sweep_main

        sweep_main(argv[1:])
        return None
    if argv[:1] == ["report"]:  # reads finished runs: no model, no data, so not a LightningCLI subcommand
        from mtlora.report import report_main

        report_main(argv[1:])
        return None
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mtlora`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()
