"""Command line entry point: dispatches before importing Lightning or torch.

Building LightningCLI's parser means importing Lightning, torch and timm and introspecting the
model, DataModule and Trainer signatures: seconds of start-up and about 1 GB.  ``mtlora --help``,
``mtlora report`` and ``mtlora data check`` need none of that, so this module imports only the
standard library; ``fit|validate|test|predict`` and the extra subcommands (methods of
:class:`~mtlora.training.commands.MTLoRATrainer`) go to :mod:`mtlora.training.lightning_cli`.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtlora.training.lightning_cli import MTLoRACLI

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

# one line each for `mtlora --help`; `mtlora <command> --help` gives every option
COMMANDS: dict[str, str] = {
    "fit": "train a model (writes the run folder: checkpoints, metrics.csv, val_results.json)",
    "validate": "evaluate a checkpoint on the validation split (writes val_results.json)",
    "test": "evaluate a checkpoint on the test split (writes test_results.json)",
    "predict": "predictions of a checkpoint: panels, label PNGs and .npy maps per image",
    "summary": "parameter counts and GMACs of a config (no data, no download)",
    "similarity": "group tasks by gradient similarity; writes a progressive plan config",
    "bench": "training/inference throughput, memory and MFU on synthetic inputs",
    "export": "inference model with merged adapters (safetensors + torch.export)",
    "export_adapters": "the trained part of a checkpoint as a small safetensors file",
    "report": "table and Pareto plot of finished runs (--experiment: the paper's tables and figures)",
    "sweep": "run every config of one of the paper's experiments (skips finished runs, resumes)",
    "edge_eval": "BSDS-protocol edge scores (ODS/OIS F) of saved edge maps",
    "data": "data check / data prepare: inspect a data folder, or convert it to streamable shards",
}
# commands without a model or a data module: module and function, called with the remaining
# arguments before Lightning is imported (a non-zero integer returned is the exit status)
LIGHT_COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("mtlora.tools.report", "report_main"),
    "sweep": ("mtlora.tools.sweep", "sweep_main"),
    "edge_eval": ("mtlora.metrics.edge_bsds", "edge_eval_main"),
    "data": ("mtlora.tools.data_cli", "data_main"),
}


def top_level_help() -> str:
    """``mtlora --help``: the commands, without building any parser."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: mtlora <command> [options]    (mtlora <command> --help for its options)",
        "",
        "Multi-task dense prediction with Swin Transformer + MTLoRA adapters.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
    ]
    return "\n".join(lines)


def run_cli(args: list[str] | None = None) -> MTLoRACLI | None:
    """Run one command; ``args`` (without the program name) lets tests run it in-process."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        if not argv:
            raise SystemExit(2)
        return None
    if argv[0] in LIGHT_COMMANDS:
        # no model and no data module: dispatched before Lightning is imported
        module, function = LIGHT_COMMANDS[argv[0]]
        status = getattr(importlib.import_module(module), function)(argv[1:])
        if isinstance(status, int) and status:
            raise SystemExit(status)
        return None
    from mtlora.training.lightning_cli import build_cli

    return build_cli(args)  # None: LightningCLI reads sys.argv itself


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mtlora`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()
