"""Adapter-only files: the trained part of a model, and the identity of the base it needs.

A parameter-efficient model is a large frozen base (ImageNet Swin weights) plus a small trained
part.  Sharing the trained part alone keeps files at the size of the trainable parameters (about
20 MB fp32 for Swin-T MTLoRA r16 instead of 120 MB), but it is only meaningful on the *same* base
weights.  So an adapter file (safetensors) holds

* every trainable parameter (adapters, unfrozen norms/biases/position tables, patch merging,
  decoders) and every persistent buffer (the heads' BatchNorm statistics), under the model's
  state-dict names;
* in the metadata (JSON strings): the architecture (:meth:`MultiTaskModel.config_dict`), the
  ``encoder.pretrained`` source and a SHA-256 of the frozen base tensors (names, dtypes, shapes,
  bytes), so that loading onto a different backbone is detected instead of silently producing
  other outputs.

:func:`load_adapters` checks the base hash (error unless ``allow_base_mismatch=True``, then a
warning), the architecture options that change outputs without changing tensor shapes (scales,
plans, shared mode), shapes, and missing/unexpected keys, and returns a
:class:`~mtlora.io.checkpoints.LoadReport`.  Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from mtlora.io.atomic import write_atomic
from mtlora.io.checkpoints import CheckpointError, LoadReport
from mtlora.io.config import config_differences
from mtlora.io.loading import Converted, apply_state_dict, refuse_nonfinite
from mtlora.io.serialization import checked_file

log = logging.getLogger(__name__)

FORMAT = "mtlora-adapters"
FORMAT_VERSION = "1"
#: options that do not change the outputs of a trained model (the base identity is the hash)
OUTPUT_NEUTRAL_OPTIONS = frozenset(
    {
        "encoder.pretrained",
        "encoder.gradient_checkpointing",
        "encoder.drop_path_rate",
        "encoder.img_size",
        "adapter.dropout",
    }
)


def frozen_base_names(model: nn.Module) -> list[str]:
    """Names of the frozen parameters: the base weights an adapter file does not contain."""
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters + persistent buffers, detached, on the CPU, in state-dict order."""
    _refuse_merged(model)
    frozen = set(frozen_base_names(model))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in frozen}


def base_weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the frozen parameters (sorted names, dtype, shape and raw bytes)."""
    digest = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in sorted(frozen_base_names(model)):
        t = params[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _refuse_merged(model: nn.Module) -> None:
    merged = [
        n
        for n, m in model.named_modules()
        if getattr(m, "merged", False) or getattr(m, "merged_paths_weight", None) is not None
    ]
    if merged:
        raise ValueError(
            f"the model has merged adapters ({len(merged)} layers, e.g. {merged[0]}): their updates live in "
            "the frozen weights, so an adapter file would be wrong; save before merging (or unmerge)"
        )


def _config(model: nn.Module) -> dict[str, Any]:
    if not hasattr(model, "config_dict"):
        raise TypeError(f"expected a MultiTaskModel (with config_dict()), got {type(model).__name__}")
    return model.config_dict()


def save_adapters(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Write the trained part of ``model`` and its base identity to a safetensors file.

    Returns the metadata written (all strings).
    """
    from safetensors.torch import save_file

    tensors = adapter_state_dict(model)
    refuse_nonfinite(tensors, path)
    config = _config(model)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config, sort_keys=True),
        "base_source": str(config["encoder"].get("pretrained") or ""),
        "base_sha256": base_weights_sha256(model),
        "base_tensors": str(len(frozen_base_names(model))),
        "trainable_parameters": str(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }
    path = write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    log.info("wrote %d adapter tensors (%d bytes) to %s", len(tensors), path.stat().st_size, path)
    return metadata


def read_adapters(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file; foreign, truncated or corrupt files fail naming the file."""
    from safetensors import SafetensorError, safe_open

    p, _ = checked_file(path, ("safetensors",), "an mtlora adapter file (safetensors)")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{p} ({p.stat().st_size} bytes) is not a readable safetensors file: truncated or corrupt ({e})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not an mtlora adapter file (metadata format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}); "
            "adapter files are written by `mtlora export_adapters` / mtlora.io.adapters.save_adapters"
        )
    return tensors, metadata


def load_adapters(
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True, allow_base_mismatch: bool = False
) -> LoadReport:
    """Load an adapter file into ``model``, whose frozen base weights must already be in place.

    Args:
        strict: fail on missing/unexpected keys and on architecture options that change outputs;
            with False they are reported and logged and the matching tensors load.  Shape
            mismatches always fail.
        allow_base_mismatch: load even when the frozen base weights differ from the ones the
            adapters were trained on (warns; the outputs will differ from the trained model's).

    Raises:
        CheckpointError: unreadable file, other base weights, or a file that does not fit.
    """
    source = os.fspath(path)
    tensors, metadata = read_adapters(source)
    report = LoadReport(source=source, source_format="mtlora_adapters")
    ours = base_weights_sha256(model)
    theirs = metadata.get("base_sha256", "")
    own_source = _config(model)["encoder"].get("pretrained") or "random initialisation"
    report.meta = {
        "base_sha256": theirs,
        "base_source": metadata.get("base_source", ""),
        "model_base_sha256": ours,
    }
    if theirs != ours:
        message = (
            f"{source}: the adapters were trained on other base weights: file base "
            f"{metadata.get('base_source') or 'random initialisation'!r} (sha256 {theirs[:16]}...), this "
            f"model's frozen weights come from {own_source!r} (sha256 {ours[:16]}...); the outputs would not "
            "be the trained model's"
        )
        if not allow_base_mismatch:
            raise CheckpointError(
                message + ". Load the same pretrained weights (encoder.pretrained) first, or pass "
                "allow_base_mismatch=True to load anyway"
            )
        warnings.warn(message + " (allow_base_mismatch=True: loading anyway)", UserWarning, stacklevel=2)
        report.notes.append("base weights differ from the ones the adapters were trained on")
    stored = json.loads(metadata.get("config", "{}"))
    report.config = stored
    report.config_mismatches = [
        d
        for d in config_differences(
            _config(model), stored, ("task_channels", "encoder", "adapter", "decoder")
        )
        if d.split(":", 1)[0] not in OUTPUT_NEUTRAL_OPTIONS
    ]
    expected = set(adapter_state_dict(model))
    return apply_state_dict(
        model, Converted(tensors), report, keep_init=lambda k: k not in expected, strict=strict
    )
