"""Initial weights for a run from a file: official MTLoRA checkpoint, adapter file or Lightning checkpoint.

``model.init_weights`` (``mtlora fit|validate|test ... --model.init_weights SPEC``) takes a path,
optionally prefixed with its kind: ``official:`` (official MTLoRA ``ckpt_epoch_*.pth``),
``adapters:`` (an adapter-only safetensors file, see :mod:`mtlora.io.adapters`) or
``lightning:`` (the model weights of a Lightning ``.ckpt``; optimizer and loop state are not
restored — that is what ``--ckpt_path`` does).  Without a prefix the suffix decides:
``.safetensors`` -> adapters, ``.ckpt`` -> Lightning, anything else -> official.

Everything is read without executing pickled code, and whatever does not fit the model (shapes,
missing or unexpected keys, architecture options) fails with a list of the differences.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from torch import nn

from mtlora.io.adapters import OUTPUT_NEUTRAL_OPTIONS, load_adapters
from mtlora.io.checkpoints import LoadReport, load_official_mtlora_checkpoint
from mtlora.io.config import config_differences
from mtlora.io.loading import Converted, apply_state_dict
from mtlora.training.checkpointing import load_lightning_checkpoint

log = logging.getLogger(__name__)

Kind = Literal["official", "adapters", "lightning"]
KINDS: tuple[str, ...] = ("official", "adapters", "lightning")


def parse_init_weights(spec: str) -> tuple[Kind, str]:
    """``"official:/x.pth"`` -> ``("official", "/x.pth")``; without a prefix the file suffix decides."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        return kind, rest  # type: ignore[return-value]
    suffix = Path(spec).suffix.lower()
    if suffix == ".safetensors":
        return "adapters", spec
    if suffix == ".ckpt":
        return "lightning", spec
    return "official", spec


def needs_pretrained_base(spec: str) -> bool:
    """Adapter files hold no base weights: the pretrained encoder must be loaded before them."""
    return parse_init_weights(spec)[0] == "adapters"


def load_lightning_weights(model: nn.Module, path: str) -> LoadReport:
    """The ``model.*`` weights of a Lightning checkpoint of :class:`~mtlora.training.module.MultiTaskModule`."""
    checkpoint = load_lightning_checkpoint(path, map_location="cpu", weights_only=True)
    report = LoadReport(source=path, source_format="lightning")
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    report.meta = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    converted = Converted(state, dropped=[k for k in checkpoint["state_dict"] if not k.startswith("model.")])
    hparams = checkpoint.get("hyper_parameters", {})
    if hasattr(model, "config_dict") and hparams:
        report.config_mismatches = [
            d
            for d in config_differences(
                model.config_dict(), hparams, ("task_channels", "encoder", "adapter", "decoder")
            )
            if d.split(":", 1)[0] not in OUTPUT_NEUTRAL_OPTIONS
        ]
    return apply_state_dict(model, converted, report, strict=True)


def load_init_weights(model: nn.Module, spec: str) -> LoadReport:
    """Load ``spec`` (see the module doc) into a :class:`~mtlora.models.model.MultiTaskModel`."""
    kind, path = parse_init_weights(spec)
    if kind == "adapters":
        report = load_adapters(model, path)
    elif kind == "lightning":
        report = load_lightning_weights(model, path)
    else:
        report = load_official_mtlora_checkpoint(path, model)
    log.info("initial weights from %s (%s): %d tensors", path, kind, len(report.loaded))
    return report


def load_run_weights(model: nn.Module, pretrained: str | None, init_weights: str | None) -> list[LoadReport]:
    """Load the weights a run starts from: ``encoder.pretrained``, then ``init_weights`` on top.

    The one place that decides what a run starts from, so that ``fit``/``validate``/... and the
    task-similarity analysis (which must look at the same network ``fit`` would train) agree.
    A full-model ``init_weights`` file (official or Lightning) replaces the pretrained encoder,
    so it is then not read at all; an adapter file holds no base weights and goes on top of it.
    """
    reports = []
    if pretrained and (init_weights is None or needs_pretrained_base(init_weights)):
        reports.append(model.load_pretrained(pretrained))
    if init_weights:
        reports.append(load_init_weights(model, init_weights))
    return reports
