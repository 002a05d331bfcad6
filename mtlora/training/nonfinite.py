"""Skipping optimizer steps with a non-finite loss or gradient, without a host sync per step.

Per training step, on the device: each task loss and the combined loss are checked with
``isfinite`` and counted per task; before the optimizer step the gradient norms are checked too,
and the resulting ``found_inf`` flag (0./1.) is handed to the *fused* AdamW kernel, which skips
the update on the device and rolls its step counter back (the mechanism ``torch.amp.GradScaler``
uses).  The host reads the counters only every ``log_every_n_steps`` steps and at epoch end,
where Lightning synchronises for logging anyway: it warns naming the tasks and counts, and stops
the run when more than ``max_steps`` steps were skipped in total.  Skipped steps leave the weights
and the optimizer state untouched.  Buffers change in the forward pass already (BatchNorm running
statistics, loss-weighting sums), before anyone knows the step is bad: they are copied when an
optimizer step's first micro-batch starts and put back on the device when the step is skipped
(or when a buffer itself became non-finite), so a NaN forward changes nothing at all.

* Under ``16-mixed`` precision the GradScaler owns ``found_inf`` (it skips steps whose gradients
  are non-finite and lowers its scale); the guard then only counts and reports.
* Without fused kernels for the device the step is skipped by dropping the gradients, which
  costs one host sync per step (documented fallback).
* Under DDP the flag is summed over ranks (a device collective), so all ranks skip together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from mtlora.io.checkpoints import CheckpointError
from mtlora.io.loading import describe_nonfinite, nonfinite_tensor_names

log = logging.getLogger(__name__)


def persistent_buffers(*modules: torch.nn.Module) -> list[Tensor]:
    """The buffers a checkpoint stores (BatchNorm statistics, ...), not the recomputed ones (masks)."""
    return [
        b
        for part in modules
        for m in part.modules()
        for name, b in m._buffers.items()
        if b is not None and name not in m._non_persistent_buffers_set
    ]


def affected_tasks(names: list[str], tasks: list[str]) -> str:
    """Which tasks the named state tensors feed: ``"tasks affected: sal"``, or all via the encoder."""
    if any(".backbone." in f".{n}" for n in names):
        return f"the shared encoder, so every task ({', '.join(tasks)})"
    hit = [t for t in tasks if any(f".{t}." in f".{n}." for n in names)]
    return f"tasks affected: {', '.join(hit) or 'none by name'}"


def check_loaded_state(state: Mapping[str, Tensor], source: str, tasks: list[str], refuse: bool) -> None:
    """Refuse (``refuse``) or warn about a checkpoint holding NaN/inf tensors, naming them and the tasks."""
    bad = nonfinite_tensor_names(state)
    if not bad:
        return
    message = f"{source}: {describe_nonfinite(bad)} ({affected_tasks(bad, tasks)}): it was written by a run that had diverged"
    if refuse:
        raise CheckpointError(f"{message}; resume or predict from an earlier checkpoint")
    rank_zero_warn(f"{message}; its outputs and metrics will be NaN")


class NonFiniteStepsError(RuntimeError):
    """Too many optimizer steps had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Device-side counters of non-finite task losses, gradients and skipped optimizer steps.

    Args:
        tasks: task names, in the order of the loss dict.
        max_steps: stop when more optimizer steps than this were skipped (over the whole run,
            resumed runs included).
    """

    def __init__(self, tasks: list[str], max_steps: int) -> None:
        if max_steps < 0:
            raise ValueError(f"model.max_nonfinite_steps must be >= 0, got {max_steps}")
        self.tasks = list(tasks)
        self.max_steps = max_steps
        # one int64 vector so the host reads everything with a single copy:
        # [steps with a non-finite loss per task..., combined loss only, gradients/buffers only, skipped steps]
        self.counts: Tensor | None = None
        self.pending: Tensor | None = None  # () bool: a non-finite loss since the last optimizer step
        self._buffers: list[Tensor] = []  # the module's buffers, and their copies from before the step
        self._saved: list[Tensor] | None = None
        self._reported = [0] * (len(self.tasks) + 3)

    def _ensure(self, device: torch.device) -> None:
        if self.counts is None or self.counts.device != device:
            self.counts = torch.tensor(self._reported, dtype=torch.int64, device=device)
            self.pending = torch.zeros((), dtype=torch.bool, device=device)

    def record_losses(self, losses: Mapping[str, Tensor], total: Tensor) -> None:
        """Count non-finite task losses of one training step (device ops only)."""
        self._ensure(total.device)
        bad = ~torch.isfinite(torch.stack([losses[t].detach().float() for t in self.tasks]))  # (T,)
        any_bad = bad.any()
        total_bad = ~torch.isfinite(total.detach().float())
        n = len(self.tasks)
        self.counts[:n] += bad
        self.counts[n] += total_bad & ~any_bad
        self.pending |= total_bad | any_bad

    def snapshot_buffers(self, buffers: list[Tensor]) -> None:
        """Copy ``buffers`` before the first forward of an optimizer step (device copies, no sync)."""
        if self._saved is None:  # later micro-batches of an accumulated step keep the first copy
            self._buffers = list(buffers)
            self._saved = [b.detach().clone() for b in self._buffers]

    def _buffers_bad(self, like: Tensor) -> Tensor:
        """() bool on ``like``'s device: a buffer became NaN/inf during this step's forwards."""
        floats = [b for b in self._buffers if b.is_floating_point()]
        if self._saved is None or not floats:
            return torch.zeros_like(like)
        zeros = torch._foreach_norm(torch._foreach_mul(floats, 0.0))  # x*0: 0 if finite, else NaN
        return ~torch.isfinite(torch.stack([z.to(like.device) for z in zeros])).all()

    def _restore_buffers(self, skip: Tensor) -> None:
        """Put the buffers back to their copies where ``skip`` is set (device ops, no sync)."""
        buffers, saved = self._buffers, self._saved
        self._buffers, self._saved = [], None
        if saved is None:
            return
        with torch.no_grad():
            for buffer, before in zip(buffers, saved):
                buffer.copy_(torch.where(skip.to(buffer.device), before, buffer))

    def before_optimizer_step(
        self, optimizer: torch.optim.Optimizer, mode: str, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """Decide on the device whether the coming step is skipped.

        Args:
            mode: ``found_inf`` (fused AdamW skips on the device, no sync), ``drop_grads``
                (fallback: one host sync; a parameter without a gradient is not updated) or
                ``count_only`` (a GradScaler decides; only the losses are counted).
            reduce: sums a tensor over DDP ranks (a device collective), so that all ranks skip together.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._ensure(
            grads[0].device
            if grads
            else (self.counts.device if self.counts is not None else torch.device("cpu"))
        )
        loss_bad = self.pending.clone()
        self.pending.zero_()
        if mode == "count_only":
            # the GradScaler skips the weights, not the buffers the forward already changed
            self._restore_buffers(loss_bad | self._buffers_bad(loss_bad))
            return
        grad_bad = self._buffers_bad(loss_bad)
        if grads:
            norms = torch._foreach_norm(grads)  # one fused pass; a NaN/inf element makes its norm non-finite
            grad_bad |= ~torch.isfinite(torch.stack([v.to(loss_bad.device) for v in norms])).all()
        flag = loss_bad | grad_bad
        if reduce is not None:
            flag = reduce(flag.float()) > 0
        self._restore_buffers(flag)
        self.counts[-2] += grad_bad & ~loss_bad
        self.counts[-1] += flag
        if mode == "found_inf":
            optimizer.found_inf = flag.float()
            optimizer.grad_scale = None
        elif bool(flag):
            optimizer.zero_grad(set_to_none=True)

    def check(self, step: int, last_checkpoint: str | None) -> None:
        """Host-side look at the counters: warn about new faults, stop after too many."""
        if self.counts is None:
            return
        counts = self.counts.tolist()
        if counts != self._reported:
            rank_zero_warn(f"non-finite values up to step {step}: {self.describe(counts)}")
        self._reported = counts
        skipped = counts[-1]
        if skipped > self.max_steps:
            kept = (
                f"the last checkpoint ({last_checkpoint}) is kept"
                if last_checkpoint
                else "no checkpoint was written"
            )
            raise NonFiniteStepsError(
                f"training stopped at step {step}: {skipped} optimizer steps were skipped because of "
                f"non-finite values, more than model.max_nonfinite_steps={self.max_steps} ({self.describe(counts)}). "
                f"Skipped steps never changed the weights, so {kept}; lower the learning rate or check the "
                "data of the named tasks, then resume with --ckpt_path last"
            )

    def describe(self, counts: list[int]) -> str:
        """``"sal: 3 steps with a non-finite loss; ...; 3 optimizer steps skipped"``."""
        n = len(self.tasks)
        parts = [f"{t}: {c} steps with a non-finite loss" for t, c in zip(self.tasks, counts[:n]) if c]
        if counts[n]:
            parts.append(
                f"{counts[n]} steps with a non-finite combined loss but finite task losses (loss weighting)"
            )
        if counts[n + 1]:
            parts.append(f"{counts[n + 1]} steps with non-finite gradients or buffers but finite losses")
        return f"{'; '.join(parts) or 'none'}; {counts[-1]} optimizer steps skipped"

    def check_state_to_save(self, state: Mapping[str, Tensor], step: int) -> None:
        """Raise before a checkpoint is written from a non-finite state (one host sync per save)."""
        bad = nonfinite_tensor_names(state)
        if bad:
            counts = self.counts.tolist() if self.counts is not None else self._reported
            raise NonFiniteStepsError(
                f"training stopped at step {step}: the model state is not finite, so no checkpoint was "
                f"written and the earlier ones are kept. {describe_nonfinite(bad)}; "
                f"{affected_tasks(bad, self.tasks)}. Non-finite values so far: {self.describe(counts)}. "
                "Lower the learning rate or check the data of the named tasks, then resume from the last "
                "checkpoint with --ckpt_path"
            )

    def state_dict(self) -> dict[str, Any]:
        """Counters as primitive values (a host sync, at checkpoint time only)."""
        return {
            "tasks": list(self.tasks),
            "counts": self.counts.tolist() if self.counts is not None else self._reported,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state or list(state.get("tasks", [])) != self.tasks:
            return
        self._reported = [int(c) for c in state["counts"]]
        self.counts = None  # rebuilt from the restored values on the training device
