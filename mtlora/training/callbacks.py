"""Callbacks that report results: a per-task table on the console and a JSON file per run."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from mtlora.io.atomic import write_json_atomic

log = logging.getLogger(__name__)


def format_metrics_table(metrics: dict[str, float], stage: str) -> str:
    """``{"val/semseg/mIoU": 12.3, ...}`` -> a task x metric table (plus Δm and losses)."""
    rows: dict[str, dict[str, float]] = {}
    extras: dict[str, float] = {}
    for key, value in sorted(metrics.items()):
        parts = key.split("/")
        if parts[0] != stage:
            continue
        if len(parts) == 3:
            rows.setdefault(parts[1], {})[parts[2]] = value
        elif len(parts) == 2:
            extras[parts[1]] = value
    lines = [f"{stage} results"]
    for task, values in rows.items():
        cells = "  ".join(f"{name}={val:.4g}" for name, val in values.items())
        lines.append(f"  {task:<12} {cells}")
    if extras:
        lines.append("  " + "  ".join(f"{k}={v:.4g}" for k, v in extras.items()))
    return "\n".join(lines)


def run_dir(trainer: Trainer) -> Path:
    """The run's log folder, computed locally (``trainer.log_dir`` is a collective under DDP)."""
    for logger in trainer.loggers:
        path = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if path:
            return Path(path)
    return Path(trainer.default_root_dir)


def model_facts(pl_module: LightningModule) -> dict:
    """Method label, adapter method, tasks and parameter counts of a run (read by ``mtlora report``)."""
    model = getattr(pl_module, "model", None)
    if model is None or not hasattr(model, "adapter_config"):
        return {}
    from mtlora.models.model import parameter_counts
    from mtlora.published import method_label

    counts = parameter_counts(model)
    return {
        "method": method_label(model.adapter_config, model.tasks),
        "adapter_method": model.adapter_config.method,
        "tasks": list(model.tasks),
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
    }


class ResultsWriter(Callback):
    """Print the per-task metrics table and write ``<log_dir>/<stage>_results.json``."""

    def __init__(self) -> None:
        self.last: dict[str, dict[str, float]] = {}
        #: the results file written last (None before one is written)
        self.results_path: Path | None = None
        # epoch and step of the evaluation itself: after fit the trainer's counters have moved on
        self.position: dict[str, tuple[int, int]] = {}
        self.paths: dict[str, Path] = {}  # stage -> results file written (read by the CLI)

    def _collect(self, trainer: Trainer, stage: str) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.last["val"] = self._collect(trainer, "val")
            self.position["val"] = (trainer.current_epoch, trainer.global_step)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.last["test"] = self._collect(trainer, "test")
        self.position["test"] = (trainer.current_epoch, trainer.global_step)
        self._report(trainer, "test")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, "val")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "validate":
            self._report(trainer, "val")

    @rank_zero_only
    def _report(self, trainer: Trainer, stage: str) -> None:
        metrics = self.last.get(stage)
        if not metrics:
            return
        print(format_metrics_table(metrics, stage))
        log_dir = run_dir(trainer)
        epoch, step = self.position.get(stage, (trainer.current_epoch, trainer.global_step))
        payload = {
            "stage": stage,
            "epoch": epoch,
            "global_step": step,
            "metrics": metrics,
        }
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt:
            payload["ckpt_path"] = str(ckpt)
        payload.update(model_facts(trainer.lightning_module))
        self.results_path = self.paths[stage] = write_json_atomic(log_dir / f"{stage}_results.json", payload)
        log.info("wrote %s", self.results_path)
