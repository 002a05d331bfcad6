"""Folding adapters into dense weights for inference, decided per block kind by cost.

What is merged where (per adapted linear layer of ``M`` tokens, ``in -> out``, rank ``r``,
``P`` task/group paths):

* **Shared path, everywhere** (``shared``/``branch`` blocks, MTLoRA+ patch merging):
  ``W <- W + s B A``.  Unmerged it costs ``M r (in + out)`` extra MACs and two extra GEMMs per
  layer; merged it is free.  (In a matrix-mode ``branch`` layer the task outputs must exclude the
  shared update, so the merged layer subtracts it again for them: same cost as unmerged there,
  the shared stream itself is free.)
* **Stream paths of ``streams`` blocks** (progressive plans): every stream ``p`` computes
  ``(W + s_p B_p A_p) x_p``, so the paths fold into a stacked ``(P, out, in)`` weight and the
  layer becomes one batched GEMM of ``P M in out`` MACs instead of the dense GEMM plus
  ``P M r (in + out)`` low-rank MACs and two more kernels.  Cost: ``P`` copies of the layer's
  weight in memory.
* **Task paths of ``branch`` blocks stay low-rank.**  For ``fc1``/``fc2`` the frozen weight reads
  the *shared* activations and only the task path reads the task stream (official MTLoRA data
  flow), so no per-task dense weight reproduces them.  For ``proj`` both read the same input and a
  per-task dense weight would be exact, but it costs ``T M in out`` MACs against
  ``M in out + T M r (in + out)`` — more whenever ``r < in out / (in + out)`` (``r < C / 2`` for a
  square layer: always, for the shipped ranks).

Merging is exact in eval mode (dropout on the low-rank input is the identity there); the
functions do not change the train/eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mtlora.models.lora import MultiPathLoRALinear, lora_layers
from mtlora.models.swin import SwinBlock


@dataclass
class MergeReport:
    """Which layers :func:`merge_model` folded, by kind of merge."""

    shared: list[str] = field(default_factory=list)
    """Layers whose shared low-rank path is now inside ``linear.weight``."""
    stream_paths: list[str] = field(default_factory=list)
    """``streams``-block layers whose paths became a stacked dense weight."""
    low_rank_paths: list[str] = field(default_factory=list)
    """``branch``-block layers whose task paths stay low-rank (see the module doc for why)."""


def _stream_layers(model: nn.Module) -> set[str]:
    """Qualified names of the adapter layers that sit in ``streams`` blocks."""
    names: set[str] = set()
    for block_name, block in model.named_modules():
        if isinstance(block, SwinBlock) and block.kind == "streams":
            prefix = f"{block_name}." if block_name else ""
            names.update(prefix + n for n, m in block.named_modules() if isinstance(m, MultiPathLoRALinear))
    return names


def merge_model(model: nn.Module) -> MergeReport:
    """Merge every adapter of ``model`` in place as the module doc says; idempotent."""
    streams = _stream_layers(model)
    report = MergeReport()
    for name, layer in lora_layers(model).items():
        layer.merge()
        if layer.shared_rank > 0:
            report.shared.append(name)
        if layer.num_paths and name in streams:
            layer.merge_paths()
            report.stream_paths.append(name)
        elif layer.num_paths:
            report.low_rank_paths.append(name)
    return report


def unmerge_model(model: nn.Module) -> None:
    """Undo :func:`merge_model`: the frozen weights are restored up to float rounding."""
    for layer in lora_layers(model).values():
        layer.unmerge_paths()
        layer.unmerge()


def is_merged(model: nn.Module) -> bool:
    """True when at least one adapter layer of ``model`` is merged."""
    return any(layer.merged or layer.merged_paths_weight is not None for layer in lora_layers(model).values())
