"""Inference exports of a trained model with its adapters merged (``mtlora export``).

An export directory holds

* ``model.safetensors`` — the merged state dict (see :mod:`mtlora.models.merging` for what is
  folded where); ``config.json`` says how to rebuild the architecture, and
  :func:`load_exported` does that with this library's *model* code only (no Lightning, no
  training code).  The low-rank tensors stay in the file, so the loaded model can be unmerged.
* ``model.pt2`` — a :func:`torch.export.export` program of the merged network in eval mode,
  batch dimension dynamic, fp32 on CPU.  It needs nothing but PyTorch::

      program = torch.export.load("model.pt2").module()
      outputs = program(images)  # {task: logits (B, C_t, H, W)}, images ImageNet-normalised

Pickled Python objects are avoided on purpose: safetensors and the ``.pt2`` archive are
loaded without executing code from the file.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from mtlora.io.atomic import write_atomic, write_text_atomic
from mtlora.io.loading import refuse_nonfinite
from mtlora.models.merging import MergeReport, merge_model
from mtlora.models.model import MultiTaskModel

log = logging.getLogger(__name__)

FORMAT = "mtlora-merged"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def merged_copy(model: MultiTaskModel) -> tuple[MultiTaskModel, MergeReport]:
    """An eval-mode copy of ``model`` with its adapters merged; ``model`` itself is untouched."""
    merged = copy.deepcopy(model).eval()
    return merged, merge_model(merged)


def export_program(model: MultiTaskModel, path: str | Path, example_batch: int = 2) -> Path:
    """Write a :func:`torch.export` program of ``model`` (eval mode) with a dynamic batch size."""
    from torch.export import Dim

    img = model.encoder_config.img_size
    param = next(model.parameters())
    example = torch.zeros(example_batch, 3, img, img, device=param.device, dtype=param.dtype)
    batch = Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes={"image": {0: batch}})
    return write_atomic(path, lambda tmp: torch.export.save(program, tmp))


def export_model(model: MultiTaskModel, out_dir: str | Path, program: bool = True) -> dict:
    """Merge a copy of ``model`` and write ``model.safetensors``, ``config.json`` (+ ``model.pt2``).

    The copy is moved to CPU in fp32 so the files do not depend on the training device.
    Returns the written ``config.json`` content.
    """
    from safetensors.torch import save_file

    refuse_nonfinite(model.state_dict(), out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged, report = merged_copy(model)  # a copy: ``model`` keeps its device, dtype and weights
    merged = merged.float().cpu()
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    write_atomic(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "tasks": list(merged.tasks),
        "model": merged.config_dict(),
        "input": {
            "size": [merged.encoder_config.img_size] * 2,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "layout": "(B, 3, H, W) float32, RGB in [0, 1] then normalised",
        },
        "outputs": "{task: logits (B, C_t, H, W)} at the input size",
        "merged": asdict(report),
        "files": {"weights": "model.safetensors", "program": "model.pt2" if program else None},
    }
    if program:
        export_program(merged, out / "model.pt2")
    write_text_atomic(out / "config.json", json.dumps(config, indent=2))
    log.info(
        "exported %s (%d shared, %d stream layers merged)", out, len(report.shared), len(report.stream_paths)
    )
    return config


def load_exported(out_dir: str | Path, device: str | torch.device = "cpu") -> MultiTaskModel:
    """Rebuild a merged model from ``model.safetensors`` + ``config.json`` (eval mode)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    config = json.loads((out / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{out / 'config.json'}: not an mtlora export (format {config.get('format')!r})")
    spec = config["model"]
    spec = {**spec, "encoder": {**spec["encoder"], "pretrained": None}}
    model = MultiTaskModel.from_config(spec, where=f"{out / 'config.json'}: ")
    merge_model(model)  # same merged layout (flags, stacked stream weights) as the exported state
    state: dict[str, Tensor] = load_file(str(out / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
