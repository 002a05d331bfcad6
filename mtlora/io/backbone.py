"""ImageNet-pretrained Swin weights for the encoder: format detection and loading.

:class:`~mtlora.models.model.MultiTaskModel` calls :func:`load_pretrained_backbone` before the
adapters are injected; it also works afterwards (adapter-wrapped layers are matched through
their ``.linear`` submodule and the adapters stay at their zero-delta initialisation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

from mtlora.io.loading import Converted, LoadReport, apply_state_dict
from mtlora.io.microsoft_swin import _convert_microsoft, merging_at_stage_start
from mtlora.io.serialization import (
    CheckpointError,
    extract_state_dict,
    safe_torch_load,
    strip_prefix,
)
from mtlora.io.timm_swin import _convert_timm, timm_pretrained_state_dict
from mtlora.models.methods.marker import adapter_parameter_names

log = logging.getLogger(__name__)

SwinFormat = Literal["microsoft", "timm"]
_SWIN_V2_MARKERS = (".cpb_mlp.", ".logit_scale", ".q_bias", ".v_bias")


def detect_swin_format(state_dict: Mapping[str, Tensor]) -> SwinFormat:
    """``microsoft`` (end-of-stage patch merging, also timm < 0.9) or ``timm`` (stage-start merging).

    Raises a :class:`CheckpointError` for layouts that are not a Swin V1 backbone: Swin V2,
    official MTLoRA training checkpoints (use :func:`load_official_mtlora_checkpoint`) and
    state dicts without any Swin key.
    """
    keys = list(strip_prefix(state_dict, "module."))
    if any(k.startswith("backbone.") for k in keys) and any(
        k.startswith(("downsampler.", "decoders.")) for k in keys
    ):
        raise CheckpointError(
            "this is a full MTLoRA model checkpoint (backbone./downsampler./decoders. keys), not ImageNet "
            "weights; load it with load_official_mtlora_checkpoint"
        )
    v2 = [k for k in keys if any(m in k for m in _SWIN_V2_MARKERS)]
    if v2:
        raise CheckpointError(f"Swin V2 weights (e.g. {v2[0]!r}) are not supported; use a Swin V1 checkpoint")
    if not any(k.startswith(("patch_embed.", "layers.")) for k in keys):
        raise CheckpointError(
            f"no Swin backbone keys (patch_embed.*, layers.*) found; first keys: {keys[:5]}"
        )
    if merging_at_stage_start(state_dict) or any(k.startswith("head.fc.") for k in keys):
        return "timm"
    return "microsoft"


def convert_swin_checkpoint(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a Microsoft or timm Swin V1 state dict, detecting which it is from the keys."""
    return _convert_swin(state_dict)[1].state_dict


def _convert_swin(state_dict: Mapping[str, Tensor]) -> tuple[SwinFormat, Converted]:
    fmt = detect_swin_format(state_dict)
    return fmt, (_convert_timm(state_dict) if fmt == "timm" else _convert_microsoft(state_dict))


def load_pretrained_backbone(
    encoder: nn.Module, source: str | os.PathLike, *, strict: bool = True, allow_unsafe: bool = False
) -> LoadReport:
    """Load ImageNet Swin V1 weights into ``encoder`` (a :class:`~mtlora.models.swin.SwinEncoder`).

    Args:
        source: a Microsoft release ``.pth`` (state dict under ``model``), a timm
            ``.pth``/``.bin``/``.safetensors`` file, or ``timm:<model name>`` (timm downloads it).
        strict: fail when an encoder weight is not in the checkpoint or the checkpoint has weights
            the encoder lacks (e.g. another depth).  Adapter parameters are never required.
            Shape mismatches (another width or head count) and "nothing matched" always fail.
        allow_unsafe: unpickle arbitrary objects (only for trusted files, see ``safe_torch_load``).

    The classifier head, the final norm and the attention-mask/position-index buffers of the file
    are ignored.  Relative position bias tables for another window size are resized bicubically
    with a warning (listed in ``LoadReport.resized``).
    """
    source_name = os.fspath(source)
    if source_name.startswith("timm:"):
        state_dict = timm_pretrained_state_dict(source_name[len("timm:") :])
    else:
        state_dict = extract_state_dict(safe_torch_load(source_name, allow_unsafe=allow_unsafe), source_name)
    try:
        fmt, converted = _convert_swin(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{source_name}: {e}") from None
    report = LoadReport(source=source_name, source_format=fmt)
    adapters = set(adapter_parameter_names(encoder))  # never in an ImageNet file: they keep their init
    return apply_state_dict(encoder, converted, report, keep_init=adapters.__contains__, strict=strict)
