"""Pretrained and official checkpoints: conversion and loading, one module per source format.

* :mod:`.microsoft_swin` — Microsoft Swin V1 release files (``swin_tiny_patch4_window7_224.pth``).
* :mod:`.timm_swin` — timm ``swin_*`` state dicts (stage-start patch merging) and ``timm:<name>``.
* :mod:`.official_mtlora` — official MTLoRA training checkpoints (yacs config inside).
* :mod:`.backbone` — format detection and :func:`load_pretrained_backbone` for the encoder.
* :mod:`.loading` — matching a converted state dict against a module; :class:`LoadReport`.
* :mod:`.serialization` — :func:`safe_torch_load`: no pickled code is executed.

Conversions are pure functions (state dict in, state dict out, tensors shared); loaders match
names with and without the adapters' ``.linear.`` level, check shapes and report what loaded.
"""

from mtlora.io.backbone import (
    convert_swin_checkpoint,
    detect_swin_format,
    load_pretrained_backbone,
)
from mtlora.io.loading import LoadReport, resize_relative_position_bias_table
from mtlora.io.microsoft_swin import convert_microsoft_swin
from mtlora.io.official_mtlora import (
    compare_official_config,
    convert_official_mtlora,
    load_official_mtlora_checkpoint,
    official_config_summary,
)
from mtlora.io.serialization import (
    CheckpointError,
    ConfigNode,
    UnsafeCheckpointError,
    extract_state_dict,
    safe_torch_load,
)
from mtlora.io.timm_swin import convert_timm_swin, timm_pretrained_state_dict

__all__ = [
    "CheckpointError",
    "ConfigNode",
    "LoadReport",
    "UnsafeCheckpointError",
    "compare_official_config",
    "convert_microsoft_swin",
    "convert_official_mtlora",
    "convert_swin_checkpoint",
    "convert_timm_swin",
    "detect_swin_format",
    "extract_state_dict",
    "load_official_mtlora_checkpoint",
    "load_pretrained_backbone",
    "official_config_summary",
    "resize_relative_position_bias_table",
    "safe_torch_load",
    "timm_pretrained_state_dict",
]
