"""Microsoft Swin V1 release (``swin_tiny_patch4_window7_224.pth``, state dict under ``model``).

Our encoder uses the Microsoft parameter names (patch merging at the end of stage ``i`` as
``layers.i.downsample``), so the conversion only removes what our encoder does not have or
recomputes: the ImageNet classifier (``head.*``) and final LayerNorm (``norm.*``, the official
MTLoRA backbone has none either), and the ``attn_mask``/``relative_position_index`` buffers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from mtlora.io.loading import Converted
from mtlora.io.serialization import CheckpointError, strip_prefix

RECOMPUTED_BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def is_recomputed_buffer(key: str) -> bool:
    """Buffers derived from the window/grid sizes, rebuilt by the model (never loaded)."""
    return key.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS


def is_classifier(key: str) -> bool:
    """The ImageNet head and the final norm of the classification model."""
    return key.startswith("head.") or key in ("norm.weight", "norm.bias")


def downsample_stages(state_dict: Mapping[str, Tensor]) -> set[int]:
    """Indices ``i`` of the ``layers.i.downsample.*`` entries."""
    return {int(m.group(1)) for k in state_dict if (m := _DOWNSAMPLE.match(k))}


def merging_at_stage_start(state_dict: Mapping[str, Tensor]) -> bool:
    """True for timm >= 0.9 (merging stored as ``layers.{i+1}.downsample``), False for Microsoft's.

    In the Microsoft layout stage 0 always has a downsample; in timm's stage 0 never has one.
    """
    stages = downsample_stages(state_dict)
    return bool(stages) and 0 not in stages


def _convert_microsoft(state_dict: Mapping[str, Tensor]) -> Converted:
    sd = strip_prefix(state_dict, "module.")
    if merging_at_stage_start(sd):
        raise CheckpointError(
            "this state dict stores patch merging at the start of each stage (timm >= 0.9 layout: "
            f"layers.{min(downsample_stages(sd))}.downsample...); convert it with convert_timm_swin"
        )
    out, dropped = {}, []
    for key, value in sd.items():
        if is_recomputed_buffer(key) or is_classifier(key):
            dropped.append(key)
        else:
            out[key] = value
    return Converted(out, {}, dropped)


def convert_microsoft_swin(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Microsoft Swin V1 state dict -> our encoder's (plain, adapter-free) names.

    Pure function: returns a new dict sharing the tensors.  Drops ``head.*``, ``norm.*``,
    ``attn_mask`` and ``relative_position_index``; strips a DDP ``module.`` prefix.
    """
    return _convert_microsoft(state_dict).state_dict
