"""Weights & Biases integration: run config, grouping, best Δm in the summary, example predictions.

Active only when one of the trainer's loggers is a ``WandbLogger`` (``-c configs/logger/wandb.yaml``);
the CLI calls :func:`prepare_wandb` for every run and nothing happens otherwise, and ``wandb`` is
imported only then.  What a run gets, so a dashboard compares baselines directly:

* ``group`` = data set (``pascal_context``, ``nyud``, ``synthetic``), ``job_type`` = subcommand,
  ``tags`` = adapter method, method label and ``r<rank>`` for LoRA methods — set as ``wandb.init``
  arguments before the run starts (``WandbLogger`` creates it lazily from ``_wandb_init``; a group
  cannot be changed afterwards), without overriding values given in the config;
* run config: ``method``, ``adapter_method``, ``shared_rank``, ``task_rank``, ``tasks``,
  ``trainable_params``, ``total_params``, ``dataset``, ``loss_weighting``;
* run summary: ``best/val_delta_m`` (or ``best/val_loss`` without a Δm baseline), its epoch and
  the per-task metrics of that epoch;
* ``val/examples/<task>``: the first validation images with predicted and true masks (semseg,
  human_parts, sal, edge as ``wandb.Image`` masks), normals as RGB (truth | prediction), depth as
  grey levels (truth | prediction).

Offline use: ``WANDB_MODE=offline`` (files under ``$WANDB_DIR``, ``wandb sync`` later) or
``WANDB_MODE=disabled``; never ``offline: true`` on the logger, which overrides the variable.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

from mtlora.tasks import task_info

log = logging.getLogger(__name__)

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet normalisation of the data modules
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def find_wandb_logger(trainer: Trainer):
    """The trainer's ``WandbLogger``, or None."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def dataset_name(datamodule: LightningDataModule | None) -> str:
    """``PascalContextDataModule`` -> ``pascal_context`` (the W&B group)."""
    if datamodule is None:
        return "unknown"
    name = type(datamodule).__name__.removesuffix("DataModule")
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


def run_info(module: LightningModule, datamodule: LightningDataModule | None) -> dict[str, Any]:
    """The facts every run records: method, ranks, tasks, parameter counts, data set."""
    from mtlora.models.methods import is_lora
    from mtlora.training.callbacks import model_facts

    adapter = module.model.adapter_config
    info = model_facts(module)
    lora = is_lora(adapter)
    info.update(
        shared_rank=adapter.shared_rank if lora else None,
        task_rank=adapter.resolved_task_rank() if lora else None,
        dataset=dataset_name(datamodule),
        loss_weighting=module.hparams.get("loss_weighting", "fixed"),
    )
    return info


def prepare_wandb(
    trainer: Trainer, module: LightningModule, datamodule: LightningDataModule | None, job_type: str | None
) -> bool:
    """If the trainer logs to W&B: fill in group/tags/job_type/config and add :class:`WandbReporter`."""
    logger = find_wandb_logger(trainer)
    if logger is None:
        return False
    info = run_info(module, datamodule)
    rank = info["shared_rank"]
    tags = [info["adapter_method"], info["method"]] + ([f"r{rank}"] if isinstance(rank, int) else [])
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and getattr(logger, "_experiment", None) is None:
        for key, value in (("group", info["dataset"]), ("job_type", job_type)):
            if init.get(key) is None and value is not None:
                init[key] = value
        init["tags"] = list(dict.fromkeys([*(init.get("tags") or []), *tags]))
        init["config"] = {**info, **(init.get("config") or {})}
    trainer.callbacks.append(WandbReporter(info, tags))
    return True


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``(3, H, W)`` -> uint8 ``(H, W, 3)``."""
    x = image.detach().float().cpu().permute(1, 2, 0).numpy() * _STD + _MEAN
    return (x.clip(0, 1) * 255).astype(np.uint8)


def _normals_rgb(n: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` normals -> uint8 RGB; invalid pixels (255) black."""
    n = n.detach().float().cpu()
    valid = (n != 255).all(0)
    n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)
    rgb = ((n + 1) / 2 * 255).clamp(0, 255) * valid
    return rgb.permute(1, 2, 0).numpy().astype(np.uint8)


def example_images(
    module: LightningModule, batch: dict[str, Any], count: int
) -> dict[str, tuple[list, dict]]:
    """``{task: (images, log_image kwargs)}`` for the first ``count`` images of ``batch``."""
    images = batch["image"][:count]
    with torch.no_grad():
        outputs = module(images)
    out: dict[str, tuple[list, dict]] = {}
    rgb = [_to_rgb(im) for im in images]
    for task, logits in outputs.items():
        target = batch[task][:count].detach().cpu()
        logits = logits.detach().float().cpu()
        kind = task_info(task).kind
        if kind in ("segmentation", "binary"):
            pred = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
            truth = (
                target
                if target.dim() == 3
                else torch.where(target[:, 0] == 255, 255, (target[:, 0] >= 0.5).long())
            )
            masks = [
                {
                    "prediction": {"mask_data": p.numpy().astype(np.uint8)},
                    "ground_truth": {"mask_data": t.numpy().astype(np.uint8)},
                }
                for p, t in zip(pred, truth)
            ]
            out[task] = (rgb, {"masks": masks})
        elif kind == "normals":
            out[task] = (
                [np.concatenate([_normals_rgb(t), _normals_rgb(p)], 1) for t, p in zip(target, logits)],
                {"caption": ["truth | prediction"] * len(rgb)},
            )
        elif kind == "depth":
            pairs = []
            for t, p in zip(target[:, 0], logits[:, 0]):
                top = float(t[t != 255].max()) if (t != 255).any() else 1.0
                grey = [(x.clamp(0, top) / max(top, 1e-6) * 255).numpy().astype(np.uint8) for x in (t, p)]
                pairs.append(np.concatenate(grey, 1))
            out[task] = (pairs, {"caption": ["truth | prediction"] * len(rgb)})
    return out


class WandbReporter(Callback):
    """Run config at start, best Δm (or loss) in the summary, example predictions per validation."""

    def __init__(self, info: dict[str, Any], tags: list[str], num_images: int = 4) -> None:
        self.info, self.tags, self.num_images = info, tags, num_images
        self.best: float | None = None

    def _run(self, trainer: Trainer):
        logger = find_wandb_logger(trainer)
        return None if logger is None else logger.experiment

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:  # other ranks hold a dummy experiment
            return
        run = self._run(trainer)
        if run is None:
            return
        run.config.update(self.info, allow_val_change=True)
        missing = [t for t in self.tags if t not in (run.tags or ())]
        if missing:  # the run existed before prepare_wandb could set its tags
            run.tags = tuple(run.tags or ()) + tuple(missing)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0 or trainer.global_rank != 0:
            return
        logger = find_wandb_logger(trainer)
        for task, (images, kwargs) in example_images(pl_module, batch, self.num_images).items():
            logger.log_image(key=f"val/examples/{task}", images=images, step=trainer.global_step, **kwargs)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        key, sign = ("val/delta_m", 1.0) if "val/delta_m" in metrics else ("val/loss", -1.0)
        if key not in metrics:
            return
        if self.best is None or sign * metrics[key] > sign * self.best:
            self.best = metrics[key]
            run = self._run(trainer)
            name = "best/val_delta_m" if key == "val/delta_m" else "best/val_loss"
            run.summary[name] = metrics[key]
            run.summary["best/epoch"] = trainer.current_epoch
            for k, v in metrics.items():
                run.summary[f"best/{k}"] = v
