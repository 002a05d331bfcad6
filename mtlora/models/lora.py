"""One multi-path low-rank linear layer for every adapter scheme.

:class:`MultiPathLoRALinear` wraps a (frozen) ``nn.Linear`` and adds

* a *shared* low-rank path ``lora_shared_A (r, in)``, ``lora_shared_B (out, r)`` (task-agnostic
  LoRA, "TA-LoRA"), and
* ``P`` *stream paths* stacked in ``lora_paths_A (P, r_p, in)``, ``lora_paths_B (P, out, r_p)``,
  one per task ("TS-LoRA") or per task group (progressive plans).  Stacking lets all paths run
  as one batched GEMM instead of a Python loop over tasks.

Conventions follow the official MTLoRA layer (docs/official_implementation.md, "Low-rank layer conventions"): the wrapped layer lives under the
attribute ``linear``; scales are raw multipliers (default 4.0), not alpha/r; dropout applies only
to the low-rank input; A is Kaiming-uniform (the ``nn.Linear`` default), B is zero so that every
adapter starts as an exact no-op.

Three forwards serve the three ways a block can use the layer:

* ``forward(x)``: the shared stream only (TA-LoRA blocks).
* ``forward_branch(x, x_paths)``: official MTLoRA task-specific semantics — the frozen weight
  reads the *shared* input and only the low-rank update reads the task input.
* ``forward_streams(xs)``: independent streams (progressive plans) — stream ``p`` is a full
  forward of the frozen weight plus path ``p``'s update on its own input.

Merging for inference: :meth:`MultiPathLoRALinear.merge` folds the shared path into the frozen
weight; :meth:`MultiPathLoRALinear.merge_paths` additionally folds every stream path into a
stacked dense weight ``(P, out, in)`` used by ``forward_streams`` (one batched GEMM per layer
instead of a dense GEMM plus two low-rank ones).  Which layers take which merge is decided per
block kind in :mod:`mtlora.models.merging`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlora.models.methods.marker import AdapterModule

SharedMode = Literal["matrix", "matrixv2", "addition", "lora_only"]


@dataclass(frozen=True)
class LoRASpec:
    """What to attach to one linear layer."""

    shared_rank: int = 0
    path_names: tuple[str, ...] = ()
    path_rank: int = 0
    shared_scale: float = 4.0
    path_scale: float = 4.0
    dropout: float = 0.0
    mode: SharedMode = "matrix"


def _kaiming_like_linear(weight: Tensor) -> None:
    """In place: U(-1/sqrt(in), 1/sqrt(in)) per (r, in) slice, i.e. nn.Linear's default init."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    nn.init.uniform_(weight, -bound, bound)


class MultiPathLoRALinear(AdapterModule):
    """A frozen linear layer plus a shared low-rank path and ``P`` stacked stream paths."""

    frozen_children = ("linear",)  # every other parameter (low-rank paths, lora_norm) is adapter weight

    def __init__(self, linear: nn.Linear, spec: LoRASpec) -> None:
        super().__init__()
        mode = spec.mode
        if not spec.path_names and mode != "matrix":
            mode = "matrix"  # the official layer coerces path-less layers to matrix mode
        if mode == "lora_only":
            raise ValueError("mode 'lora_only' means no stream paths; build the spec without path_names")
        if spec.shared_rank < 0 or spec.path_rank < 0:
            raise ValueError(
                f"LoRA ranks must be >= 0, got shared {spec.shared_rank}, paths {spec.path_rank}"
            )
        if spec.path_names and spec.path_rank <= 0:
            raise ValueError(f"path rank must be > 0 for paths {spec.path_names}, got {spec.path_rank}")
        self.linear = linear
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.mode: SharedMode = mode
        self.path_names: tuple[str, ...] = tuple(spec.path_names)
        self.shared_scale = float(spec.shared_scale)
        self.path_scale = float(spec.path_scale)
        self.merged = False
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

        self.shared_rank = spec.shared_rank if mode != "addition" else 0
        if self.shared_rank > 0:
            self.lora_shared_A = nn.Parameter(torch.empty(self.shared_rank, self.in_features))
            self.lora_shared_B = nn.Parameter(torch.zeros(self.out_features, self.shared_rank))
            _kaiming_like_linear(self.lora_shared_A.data)
        if mode == "addition":
            self.lora_norm = nn.LayerNorm(self.out_features)
        self.path_rank = spec.path_rank if self.path_names else 0
        if self.path_names:
            n = len(self.path_names)
            self.lora_paths_A = nn.Parameter(torch.empty(n, self.path_rank, self.in_features))
            self.lora_paths_B = nn.Parameter(torch.zeros(n, self.out_features, self.path_rank))
            _kaiming_like_linear(self.lora_paths_A.data)
        # (P, out, in) stream weights with the paths folded in; None until merge_paths()
        self.merged_paths_weight: Tensor | None
        self.register_buffer("merged_paths_weight", None)

    # ------------------------------------------------------------------ low-rank pieces
    @property
    def num_paths(self) -> int:
        return len(self.path_names)

    def shared_delta(self, x_dropped: Tensor) -> Tensor:
        """``s * B A x`` of the shared path; ``x_dropped`` is the already dropped-out input."""
        return (x_dropped @ self.lora_shared_A.t() @ self.lora_shared_B.t()) * self.shared_scale

    def add_shared(self, out: Tensor, x_dropped: Tensor, sign: float = 1.0) -> Tensor:
        """``out + sign * s * B A x`` with the second low-rank GEMM and the add fused (``addmm``).

        Same value as ``out + sign * shared_delta(x)``, but the full-width ``(M, out)`` update
        is never materialised, scaled and added in separate passes: the scale rides on the
        GEMM's ``alpha`` and the sum is written once.
        """
        h = x_dropped.reshape(-1, self.in_features) @ self.lora_shared_A.t()  # (M, r)
        y = torch.addmm(
            out.reshape(-1, self.out_features), h, self.lora_shared_B.t(), alpha=sign * self.shared_scale
        )
        return y.view(out.shape)

    def path_deltas(self, u: Tensor, base: Tensor, per_path: bool) -> Tensor:
        """``base + s_p * B_p A_p u_p`` for every path ``p``, as ``(P, ..., out)``.

        ``u`` is one tensor ``(..., in)`` read by every path (``per_path=False``: one GEMM against
        all A's concatenated) or a stack ``(P, ..., in)`` with one input per path (one batched
        GEMM).  ``base`` is ``(P, ..., out)`` and may be an expanded (stride-0) view.
        """
        n, r = self.num_paths, self.path_rank
        if per_path:
            h = torch.bmm(u.reshape(n, -1, self.in_features), self.lora_paths_A.transpose(1, 2))  # (P, M, r)
        else:
            flat = u.reshape(-1, self.in_features)  # (M, in)
            h = (flat @ self.lora_paths_A.reshape(n * r, self.in_features).t()).view(-1, n, r).transpose(0, 1)
        out = torch.baddbmm(
            base.reshape(n, -1, self.out_features),
            h,
            self.lora_paths_B.transpose(1, 2),
            alpha=self.path_scale,
        )
        return out.view(base.shape)

    # ------------------------------------------------------------------ forwards
    def forward(self, x: Tensor) -> Tensor:
        """Shared-stream output ``W x + b + s B A dropout(x)`` (mode-dependent, see class doc)."""
        if self.mode == "addition":
            return self.forward_branch(x)[0]
        out = self.linear(x)
        if self.shared_rank > 0 and not self.merged:
            out = self.add_shared(out, self.dropout(x))
        return out

    def forward_branch(self, x: Tensor, x_paths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Official MTLoRA task-specific layer: returns ``(shared_out, path_outs (P, ..., out))``.

        The frozen weight is applied once, to the shared input ``x``; path ``p`` adds its update
        of ``x_paths[p]`` (or of ``dropout(x)`` when no path inputs are given, as the official
        layer does — dropout is *not* applied to given path inputs).  In ``matrix`` mode the path
        outputs exclude the shared update, in ``matrixv2`` they include it; in ``addition`` mode
        the shared output is ``P + LayerNorm(sum_p path_out_p)``.
        """
        if not self.path_names:
            y = self.forward(x)
            return y, y.unsqueeze(0)
        base = self.linear(x)
        x_drop = self.dropout(x)
        u, per_path = (x_drop, False) if x_paths is None else (x_paths, True)
        if self.mode == "addition":
            paths = self.path_deltas(u, base.unsqueeze(0).expand(self.num_paths, *base.shape), per_path)
            return base + self.lora_norm(paths.sum(0)), paths
        shared = base
        if self.shared_rank > 0 and not self.merged:
            shared = self.add_shared(base, x_drop)
        elif self.shared_rank > 0 and self.mode == "matrix":
            # merged weights contain the shared update, which matrix-mode path outputs exclude
            base = self.add_shared(base, x, sign=-1.0)
        path_base = shared if self.mode == "matrixv2" else base
        paths = self.path_deltas(u, path_base.unsqueeze(0).expand(self.num_paths, *path_base.shape), per_path)
        return shared, paths

    def forward_streams(self, xs: Tensor) -> Tensor:
        """Independent streams ``(P, ..., in)``: ``W x_p + b + s_p B_p A_p dropout(x_p)``."""
        if xs.shape[0] != self.num_paths:
            raise ValueError(f"expected {self.num_paths} streams ({self.path_names}), got {xs.shape[0]}")
        if self.merged_paths_weight is not None:  # every path folded into its own dense weight
            flat = xs.reshape(self.num_paths, -1, self.in_features)  # (P, M, in)
            weight = self.merged_paths_weight.transpose(1, 2)  # (P, in, out)
            bias = self.linear.bias
            out = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias, flat, weight)
            return out.view(*xs.shape[:-1], self.out_features)
        base = self.linear(xs)
        xs_drop = self.dropout(xs)
        if self.shared_rank > 0 and not self.merged:
            base = self.add_shared(base, xs_drop)
        return self.path_deltas(xs_drop, base, per_path=True)

    # ------------------------------------------------------------------ merging
    def shared_weight_delta(self) -> Tensor:
        """The dense ``(out, in)`` update of the shared path."""
        return (self.lora_shared_B @ self.lora_shared_A) * self.shared_scale

    def merge(self) -> None:
        """Fold the shared low-rank path into ``linear.weight`` (exact in eval mode)."""
        if self.merged:
            return
        if self.shared_rank > 0:
            with torch.no_grad():
                self.linear.weight += self.shared_weight_delta().to(self.linear.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if not self.merged:
            return
        if self.shared_rank > 0:
            with torch.no_grad():
                self.linear.weight -= self.shared_weight_delta().to(self.linear.weight.dtype)
        self.merged = False

    def path_weight_deltas(self) -> Tensor:
        """The dense ``(P, out, in)`` updates ``s_p B_p A_p`` of the stream paths."""
        return torch.bmm(self.lora_paths_B, self.lora_paths_A) * self.path_scale

    def merge_paths(self) -> None:
        """Fold every stream path into a stacked dense weight ``W (+ shared) + s_p B_p A_p``.

        Only :meth:`forward_streams` uses it (exact in eval mode, where dropout is the
        identity); ``forward_branch`` keeps its low-rank paths because there the frozen
        weight reads the shared input and only the paths read the task inputs.  The stack is
        a persistent buffer, so a merged model's state dict (and an export) carries it.
        """
        if self.merged_paths_weight is not None or not self.path_names:
            return
        with torch.no_grad():
            weight = self.linear.weight
            if self.shared_rank > 0 and not self.merged:
                weight = weight + self.shared_weight_delta().to(weight.dtype)
            stacked = weight.unsqueeze(0) + self.path_weight_deltas().to(weight.dtype)
        self.merged_paths_weight = stacked.detach()

    def unmerge_paths(self) -> None:
        """Undo :meth:`merge_paths` (the low-rank paths were never modified)."""
        self.merged_paths_weight = None

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, mode={self.mode}, shared_rank={self.shared_rank}, "
            f"paths={list(self.path_names)}, path_rank={self.path_rank}, scales=({self.shared_scale}, "
            f"{self.path_scale})"
        )


def inject_lora(root: nn.Module, spec_for: Callable[[str, nn.Linear], LoRASpec | None]) -> list[str]:
    """Replace every ``nn.Linear`` under ``root`` for which ``spec_for(name, layer)`` gives a spec.

    Returns the names of the wrapped layers (callers check that their targets matched some).
    """
    wrapped: list[str] = []
    for name, module in list(root.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        spec = spec_for(name, module)
        if spec is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, attr, MultiPathLoRALinear(module, spec))
        wrapped.append(name)
    return wrapped


def lora_layers(root: nn.Module) -> dict[str, MultiPathLoRALinear]:
    """All adapter layers under ``root`` by qualified name."""
    return {n: m for n, m in root.named_modules() if isinstance(m, MultiPathLoRALinear)}
