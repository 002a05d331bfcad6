"""LightningModule: wires the multi-task model, losses, metrics and the optimiser recipe.

It holds no data logic: batches arrive in the convention of :mod:`mtlora.tasks` and the task
list/channels come from the DataModule (linked by the CLI).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from mtlora.io.checkpoints import CheckpointError
from mtlora.losses import MultiTaskLoss
from mtlora.models.model import DecoderConfig, EncoderConfig, MultiTaskModel, as_config, parameter_counts
from mtlora.models.plans import AdapterConfig
from mtlora.options import check_number
from mtlora.training.checkpointing import (
    capture_rng_state,
    check_checkpoint_fits,
    load_lightning_checkpoint,
    restore_rng_state,
    warn_epoch_end_resume_with_max_steps,
)
from mtlora.training.nonfinite import NonFiniteGuard, check_loaded_state, persistent_buffers
from mtlora.training.optim import adamw, warmup_cosine_schedule
from mtlora.weighting import build_weighting

log = logging.getLogger(__name__)


class MultiTaskModule(LightningModule):
    """Multi-task dense prediction with a parameter-efficient Swin encoder.

    Args:
        task_channels: output channels per task, in task order (linked from the DataModule).
        encoder: Swin encoder options.
        adapter: adapter method and ranks (MTLoRA by default).
        decoder: decoder options.
        loss_weights: per-task loss weights; unspecified tasks use the official values
            (semseg 1, human_parts 2, sal 5, normals 10, edge 50, depth 1).
        lr: base learning rate at ``lr_reference_batch`` images per step.
        lr_reference_batch: the learning rates are scaled by global batch / this (official: 512);
            None uses them as given.
        warmup_lr: learning rate at the start of warm-up (scaled like ``lr``).
        min_lr: final learning rate of the cosine schedule (scaled like ``lr``).
        warmup_epochs: linear warm-up length in epochs (stepped per iteration).
        weight_decay: AdamW weight decay; never applied to biases, norms or other 1-D parameters.
        batch_size: per-device batch size (linked from the DataModule) for the LR scaling.
        delta_m_baseline: single-task reference for Δm: a named set (``pascal_context_swin_t``,
            ``nyud_swin_t``) or ``{"task/metric": value}``; None disables ``val/delta_m``.
        edge_max_dist: edge ODS matching tolerance as a fraction of the image diagonal
            (PASCAL 0.0075, NYUD 0.011, as SEISM).
        edge_eval: ``fast`` (the live ``odsF`` approximation only) or ``exact``: ``mtlora test``
            also scores edges by the BSDS/SEISM protocol of the MTL papers (thinning, one-to-one
            matching, 99 thresholds; ``test/edge/odsF_bsds``, ``oisF_bsds``), on the CPU and slow,
            so validation during training keeps the fast one (:mod:`mtlora.metrics.edge_bsds`).
        loss_weighting: how task losses combine: ``fixed`` (``loss_weights``, the paper's
            recipe), ``uncertainty`` (Kendall et al. 2018, learnable log-variances, no weight
            decay) or ``dwa`` (Dynamic Weight Average, Liu et al. 2019, T=2, on top of the fixed
            weights); see :mod:`mtlora.weighting`. Logged as ``train/weight/<task>``.
        compile: compile the model's forward with ``torch.compile(fullgraph=True)`` when the
            Trainer sets the module up (in place: checkpoint keys are unchanged).
        init_weights: initial weights loaded when a loop starts, unless ``--ckpt_path`` is given:
            an official MTLoRA checkpoint, an adapter-only ``.safetensors`` file (loaded on top of
            ``encoder.pretrained``) or a Lightning ``.ckpt`` (model weights only); prefix
            ``official:``/``adapters:``/``lightning:`` to force the kind (:mod:`mtlora.training.init_weights`).
        max_nonfinite_steps: optimizer steps with a non-finite loss or gradient are skipped (with a
            warning naming the tasks); more than this many in total stop the run
            (:mod:`mtlora.training.nonfinite`).
    """

    def __init__(
        self,
        task_channels: dict[str, int] | None = None,
        encoder: EncoderConfig = EncoderConfig(),
        adapter: AdapterConfig = AdapterConfig(),
        decoder: DecoderConfig = DecoderConfig(),
        loss_weights: dict[str, float] | None = None,
        lr: float = 5e-4,
        lr_reference_batch: int | None = 512,
        warmup_lr: float = 5e-7,
        min_lr: float = 5e-6,
        warmup_epochs: float = 20.0,
        weight_decay: float = 0.05,
        batch_size: int = 32,
        delta_m_baseline: str | dict[str, float] | None = "pascal_context_swin_t",
        edge_max_dist: float = 0.0075,
        edge_eval: Literal["fast", "exact"] = "fast",
        loss_weighting: Literal["fixed", "uncertainty", "dwa"] = "fixed",
        compile: bool = False,
        init_weights: str | None = None,
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        if not task_channels:
            raise ValueError(
                "model.task_channels is empty: give the data module's tasks (the CLI links them)"
            )
        for option, value, bounds in (
            ("lr", lr, {"above": 0}),
            ("warmup_lr", warmup_lr, {"minimum": 0}),
            ("min_lr", min_lr, {"minimum": 0}),
            ("warmup_epochs", warmup_epochs, {"minimum": 0}),
            ("weight_decay", weight_decay, {"minimum": 0}),
            ("edge_max_dist", edge_max_dist, {"above": 0, "below": 1}),
            ("batch_size", batch_size, {"above": 0, "integer": True}),
        ):
            check_number(f"model.{option}", value, **bounds)
        if lr_reference_batch is not None:
            check_number("model.lr_reference_batch", lr_reference_batch, above=0, integer=True)
        encoder = as_config(EncoderConfig, encoder)
        adapter = as_config(AdapterConfig, adapter)
        decoder = as_config(DecoderConfig, decoder)
        self.save_hyperparameters()
        # checkpoints keep plain dicts so they load with torch's weights-only unpickler
        self.hparams.update(encoder=asdict(encoder), adapter=asdict(adapter), decoder=asdict(decoder))
        self.tasks = list(task_channels)
        # ImageNet weights are loaded by load_initial_weights(), so that building the module
        # (summary, load_from_checkpoint, resume) never downloads weights a checkpoint replaces
        self.model = MultiTaskModel(dict(task_channels), encoder, adapter, decoder, load_pretrained=False)
        self._pretrained_pending = bool(encoder.pretrained)
        self.criterion = MultiTaskLoss(self.tasks, loss_weights)
        self.weighting = build_weighting(loss_weighting, self.tasks, self.criterion.weights)
        self.evaluators = torch.nn.ModuleDict()
        self._build_metrics(dict(task_channels))
        self.delta_m_tasks = self._delta_m_tasks(delta_m_baseline)
        self._init_weights_pending = init_weights
        self._rng_to_restore: dict | None = None
        self.nonfinite = NonFiniteGuard(self.tasks, max_nonfinite_steps)
        self._labelled: Tensor | None = None
        self._guarded_buffers: list[Tensor] | None = None  # found again when training starts

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> MultiTaskModule:
        """Lightning's, but a missing, truncated, corrupt, foreign or unsafe local file fails naming it."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception:
            if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
                # reads the file the way every other loader does: raises the named error if it is the file
                load_lightning_checkpoint(
                    checkpoint_path, weights_only=kwargs.get("weights_only") is not False
                )
            raise

    # ------------------------------------------------------------------ metrics plumbing
    def _build_metrics(self, task_channels: dict[str, int]) -> None:
        from mtlora.metrics import LossMean, MultiTaskEvaluator

        # data-set losses (sums and counts reduced over ranks): the same on 1 or N devices
        self.eval_losses = torch.nn.ModuleDict()
        for stage in ("val", "test"):
            self.evaluators[stage] = MultiTaskEvaluator(
                list(task_channels),
                task_channels,
                edge_max_dist=self.hparams.edge_max_dist,
                edge_exact=stage == "test" and self.hparams.get("edge_eval", "fast") == "exact",
            )
            self.eval_losses[stage] = LossMean(list(task_channels))

    def load_initial_weights(self) -> None:
        """Load ``encoder.pretrained`` and ``init_weights`` once, unless a checkpoint was restored.

        Called when a loop starts (after Lightning restored ``--ckpt_path``, whose
        ``on_load_checkpoint`` cancels it: the checkpoint holds every weight, and the initial
        files may be offline or moved by then) and by ``mtlora similarity``.  It cannot run in
        ``setup()``: Lightning sets ``trainer.ckpt_path`` only after that hook.
        """
        from mtlora.training.init_weights import load_run_weights

        pretrained = self.model.encoder_config.pretrained if self._pretrained_pending else None
        init, self._init_weights_pending = self._init_weights_pending, None
        self._pretrained_pending = False
        load_run_weights(self.model, pretrained, init)

    def configure_model(self) -> None:
        # nn.Module.compile wraps the call, not the module, so parameter names stay the same
        if self.hparams.get("compile", False) and self.model._compiled_call_impl is None:
            self.model.compile(fullgraph=True)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return self.model(image)

    def _losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training batch: total and per-task losses; also counts the epoch's labelled pixels."""
        losses = self.criterion(outputs, batch)
        # labelled elements per task this epoch, on the device (read once per epoch)
        labelled = self.criterion.labelled(batch).float()
        self._labelled = labelled if self._labelled is None else self._labelled + labelled
        return self.weighting(losses), losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self.model(batch["image"])
        total, losses = self._losses(outputs, batch)
        self.nonfinite.record_losses(losses, total)  # device-side counters, no host sync
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{t}/loss": v.detach() for t, v in losses.items()}, batch_size=bs)
        self.log_dict({f"train/weight/{t}": w for t, w in self.weighting.weights().items()}, batch_size=bs)
        return total

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        outputs = self.model(batch["image"])
        self.eval_losses[stage].update(self.criterion.sums(outputs, batch))
        self.evaluators[stage].update(outputs, batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        evaluator = self.evaluators[stage]
        results = evaluator.compute()  # collective under DDP: every rank calls it
        losses = self.eval_losses[stage].compute()  # collective too
        logged = {f"{stage}/{k}": v for k, v in results.items()}
        logged.update({f"{stage}/{t}/loss": v for t, v in losses.items()})
        logged[f"{stage}/loss"] = self.weighting(losses).detach()
        # values are already reduced over ranks by compute(); sync_dist only keeps Lightning quiet
        self.log_dict(logged, sync_dist=True)
        dm = self._delta_m(results)
        if dm is not None:
            self.log(f"{stage}/delta_m", dm, prog_bar=stage == "val", sync_dist=True)
        evaluator.reset()
        self.eval_losses[stage].reset()

    def _delta_m_tasks(self, baseline: str | dict[str, float] | None) -> list[str]:
        """Tasks that enter Δm; fails early when the baseline covers none of them."""
        if baseline is None:
            return []
        from mtlora.metrics import resolve_baselines

        keys = resolve_baselines(baseline)
        covered = [t for t in self.tasks if any(k.split("/", 1)[0] == t for k in keys)]
        if not covered:
            raise ValueError(
                f"model.delta_m_baseline: {baseline!r} has no baseline for any trained task {self.tasks} "
                f"(baseline keys {sorted(keys)}); give one or set it to null"
            )
        missing = [t for t in self.tasks if t not in covered]
        if missing:
            log.warning("Δm leaves out %s: no single-task baseline in %r", missing, baseline)
        return covered

    def _delta_m(self, results: dict[str, Tensor]) -> Tensor | None:
        if not self.delta_m_tasks:
            return None
        from mtlora.metrics import delta_m_tensor

        return delta_m_tensor(results, self.hparams.delta_m_baseline, tasks=self.delta_m_tasks)

    def on_train_epoch_end(self) -> None:
        self.weighting.end_epoch(lambda t: self.trainer.strategy.reduce(t, reduce_op="mean"))
        self._check_nonfinite()
        self._warn_unlabelled_tasks()

    def _warn_unlabelled_tasks(self) -> None:
        """Warn about tasks without one labelled pixel in the epoch: their loss was 0 throughout.

        E.g. human_parts when no training image has a person with parts: the task trains nothing
        and its validation mIoU is NaN, which is easy to miss in a long run.
        """
        labelled, self._labelled = self._labelled, None
        if labelled is None:  # no batch on this rank; the reduce below is collective
            labelled = torch.zeros(len(self.tasks), device=self.device)
        if self.trainer.world_size > 1:
            labelled = self.trainer.strategy.reduce(labelled, reduce_op="sum")
        empty = [t for t, n in zip(self.tasks, labelled.tolist()) if n == 0]
        if empty and self.global_rank == 0:
            log.warning(
                "training epoch %d: no labelled pixel for task(s) %s in any batch; their loss was 0 "
                "and they learned nothing (check the data, e.g. `mtlora data check`)",
                self.current_epoch,
                ", ".join(empty),
            )

    # ------------------------------------------------------------------ reliability
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # BatchNorm statistics and loss-weighting sums change in the forward: keep a copy to put
        # back if the step turns out non-finite (mtlora.training.nonfinite)
        if self._guarded_buffers is None:
            self._guarded_buffers = persistent_buffers(self.model, self.weighting)
        self.nonfinite.snapshot_buffers(self._guarded_buffers)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            mode = "count_only"  # 16-mixed: the GradScaler skips non-finite steps itself
        else:
            mode = "found_inf" if optimizer.defaults.get("fused") else "drop_grads"
        world = self.trainer.world_size
        reduce = (lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if world > 1 else None
        self.nonfinite.before_optimizer_step(optimizer, mode, reduce)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self._check_nonfinite()  # host read only at logging intervals

    def _check_nonfinite(self) -> None:
        callback = self.trainer.checkpoint_callback
        last = (getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")) or None
        self.nonfinite.check(self.trainer.global_step, last)

    def on_train_end(self) -> None:
        self._check_nonfinite()  # the last steps may fall between two logging intervals

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # before anything is written: a non-finite state never replaces a finite checkpoint
        self.nonfinite.check_state_to_save(checkpoint["state_dict"], self.trainer.global_step)
        # tensors and primitive values only: checkpoints stay loadable with weights_only=True
        checkpoint["mtlora"] = {"rng": capture_rng_state(), "nonfinite": self.nonfinite.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # shapes always; missing/unexpected keys only for a Trainer restore (load_from_checkpoint has
        # its own `strict` argument, which this hook cannot see)
        path = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(
            self.state_dict(),
            checkpoint,
            str(path or "checkpoint"),
            dict(self.hparams),
            strict=self._trainer is not None and self.strict_loading,
        )
        stage = self._trainer.state.fn if self._trainer is not None else None
        # training on, or writing panels of, NaN is refused; validate/test/export only warn here
        check_loaded_state(
            checkpoint.get("state_dict", {}),
            str(path or "checkpoint"),
            self.tasks,
            stage in ("fit", "predict"),
        )
        extra = checkpoint.get("mtlora", {})
        self._rng_to_restore = extra.get("rng")
        self.nonfinite.load_state_dict(extra.get("nonfinite"))
        self._pretrained_pending = False  # the checkpoint holds every weight
        self._init_weights_pending = None

    def on_train_start(self) -> None:
        self.load_initial_weights()  # no-op after the sanity check or a restored checkpoint
        self._guarded_buffers = None  # the strategy may have moved them to another device
        # after the sanity check, right before the first resumed step: same dropout/drop-path draws
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore, self.global_rank, self.trainer.world_size)
            self._rng_to_restore = None
        if self.trainer.ckpt_path is not None:
            warn_epoch_end_resume_with_max_steps(self.trainer)

    def on_validation_start(self) -> None:
        self.load_initial_weights()  # the sanity check is the first loop of a fit

    def on_test_start(self) -> None:
        self.load_initial_weights()

    def on_predict_start(self) -> None:
        self.load_initial_weights()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"outputs": self.model(batch["image"]), "meta": batch.get("meta")}

    # ------------------------------------------------------------------ optimisation
    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self.model)

    def lr_scale(self) -> float:
        if self.hparams.lr_reference_batch is None:
            return 1.0
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return self.hparams.batch_size * world * accumulate / self.hparams.lr_reference_batch

    def configure_optimizers(self):
        scale = self.lr_scale()
        no_decay_extra = [
            p for p in self.weighting.parameters() if p.requires_grad
        ]  # uncertainty log-variances
        optimizer = adamw(self.model, self.hparams.lr * scale, self.hparams.weight_decay, no_decay_extra)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = int(round(self.hparams.warmup_epochs * total / epochs))
        log.info(
            "optimizer: AdamW peak lr %.3g (base %.3g x %.4g), %d warm-up of %d steps",
            self.hparams.lr * scale,
            self.hparams.lr,
            scale,
            warmup,
            total,
        )
        schedule = warmup_cosine_schedule(
            optimizer, warmup, total, self.hparams.warmup_lr * scale, self.hparams.min_lr * scale
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
