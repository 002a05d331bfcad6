"""Loss weighting: how per-task losses become the one scalar that is back-propagated.

Every scheme is a small ``nn.Module`` with the same interface, so the LightningModule only calls
``weighting(losses)`` for the total, ``weighting.weights()`` for logging and
``weighting.end_epoch(reduce)`` once per training epoch:

* :class:`FixedWeighting` — ``sum_t w_t L_t`` with the fixed per-task weights (the paper's recipe:
  semseg 1, human_parts 2, sal 5, normals 10, edge 50, depth 1).
* :class:`UncertaintyWeighting` — Kendall, Gal & Cipolla (CVPR 2018), learnable ``s_t = log sigma_t^2``.
  Their Gaussian-likelihood derivation gives ``1/(2 sigma^2) L + log sigma`` for regression and the
  softmax approximation ``1/sigma^2 L + log sigma`` for classification, i.e. with ``s``:
  ``c_t exp(-s_t) L_t + s_t / 2`` where ``c_t = 1/2`` for regression (normals, depth) and ``1`` for
  classification (semseg, human_parts, and the per-pixel Bernoulli tasks sal and edge).  (The often
  quoted ``exp(-s) L + s`` is twice the classification form.)  ``s_t`` starts where
  ``c_t exp(-s_t)`` equals the fixed weight, so step 0 equals the fixed recipe.
* :class:`DWAWeighting` — Dynamic Weight Average, Liu, Johns & Davison (CVPR 2019):
  ``lambda_t = T_count * softmax_t(r_t / temperature)``, ``r_t = L_t(e-1) / L_t(e-2)`` from the
  mean training losses of the last two epochs (``lambda = 1`` for the first two epochs),
  temperature 2.  The ratio is scale-free, so ``lambda_t`` multiplies the fixed weights (with all
  fixed weights 1 this is the original DWA); per-epoch sums stay on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtlora.tasks import task_info

WeightingName = Literal["fixed", "uncertainty", "dwa"]


class LossWeighting(nn.Module):
    """Common interface: ``forward(losses) -> total``; ``weights()``; ``end_epoch(reduce)``."""

    def __init__(self, tasks: Sequence[str], fixed: Mapping[str, float]) -> None:
        super().__init__()
        missing = [t for t in tasks if t not in fixed]
        if missing:
            raise ValueError(f"loss weighting: no fixed weight for tasks {missing} (have {sorted(fixed)})")
        self.tasks = list(tasks)
        self.register_buffer("fixed", torch.tensor([float(fixed[t]) for t in self.tasks]), persistent=False)

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([losses[t].float() for t in self.tasks])  # (T,)

    def effective(self) -> Tensor:
        """Current multiplier of every task's loss, ``(T,)``."""
        return self.fixed

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return (self.effective() * self._stack(losses)).sum()

    def weights(self) -> dict[str, Tensor]:
        """``{task: current multiplier of its loss}`` (detached), for ``train/weight/<task>``."""
        w = self.effective().detach()
        return {t: w[i] for i, t in enumerate(self.tasks)}

    def end_epoch(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Called once after every training epoch; ``reduce`` averages a tensor over processes."""


class FixedWeighting(LossWeighting):
    """``sum_t w_t L_t`` with constant weights."""


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018), see the module docstring."""

    def __init__(self, tasks: Sequence[str], fixed: Mapping[str, float]) -> None:
        super().__init__(tasks, fixed)
        regression = [task_info(t).regression for t in self.tasks]
        self.register_buffer(
            "factor", torch.tensor([0.5 if r else 1.0 for r in regression]), persistent=False
        )
        start = [-math.log(fixed[t] / (0.5 if r else 1.0)) for t, r in zip(self.tasks, regression)]
        self.log_vars = nn.Parameter(torch.tensor(start))  # s_t = log sigma_t^2, (T,)

    def effective(self) -> Tensor:
        return self.factor * torch.exp(-self.log_vars)

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return (self.effective() * self._stack(losses) + 0.5 * self.log_vars).sum()


class DWAWeighting(LossWeighting):
    """Dynamic Weight Average (Liu et al. 2019) on top of the fixed weights, see the module docstring."""

    def __init__(self, tasks: Sequence[str], fixed: Mapping[str, float], temperature: float = 2.0) -> None:
        super().__init__(tasks, fixed)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = temperature
        n = len(self.tasks)
        # buffers: they follow the device and are saved in checkpoints, so a resumed run keeps its history
        self.register_buffer("epoch_sum", torch.zeros(n))  # sum of this epoch's training losses
        self.register_buffer("epoch_steps", torch.zeros(()))
        self.register_buffer("history", torch.ones(2, n))  # mean losses of epochs e-2 (row 0) and e-1 (row 1)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("lambdas", torch.ones(n))

    def effective(self) -> Tensor:
        return self.fixed * self.lambdas

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = self._stack(losses)
        if self.training:  # a step with a non-finite loss (skipped by the optimiser guard) is left out
            finite = torch.isfinite(stacked).all()
            self.epoch_sum += torch.where(finite, stacked.detach(), torch.zeros_like(stacked))
            self.epoch_steps += finite.float()
        return (self.effective() * stacked).sum()

    def end_epoch(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        means = self.epoch_sum / self.epoch_steps.clamp_min(1)
        if reduce is not None:
            means = reduce(means)
        seen = self.epoch_steps > 0  # an epoch without training steps changes nothing
        self.history.copy_(torch.where(seen, torch.stack([self.history[1], means]), self.history))
        self.epochs_seen += seen.long()
        self.lambdas.copy_(dwa_lambdas(self.history[0], self.history[1], self.temperature, self.epochs_seen))
        self.epoch_sum.zero_()
        self.epoch_steps.zero_()


def dwa_lambdas(before_last: Tensor, last: Tensor, temperature: float, epochs_seen: Tensor | int) -> Tensor:
    """``K softmax(r / T)`` with ``r = last / before_last``; ones until two epochs have been seen."""
    ratio = last / before_last.clamp_min(1e-12)
    lam = len(last) * torch.softmax(ratio / temperature, dim=0)
    return torch.where(torch.as_tensor(epochs_seen, device=last.device) >= 2, lam, torch.ones_like(lam))


def build_weighting(name: WeightingName, tasks: Sequence[str], fixed: Mapping[str, float]) -> LossWeighting:
    """The weighting module called ``name`` for ``tasks`` (``fixed``: the per-task fixed weights)."""
    schemes = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting, "dwa": DWAWeighting}
    if name not in schemes:
        raise ValueError(f"model.loss_weighting: expected one of {list(schemes)}, got {name!r}")
    return schemes[name](tasks, fixed)
