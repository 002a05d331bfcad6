"""What the bench measures: settings, the variants built from one configuration, synthetic inputs
and the training step every measurement runs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from mtlora.losses import MultiTaskLoss
from mtlora.models.lora import lora_layers
from mtlora.models.methods import is_lora
from mtlora.models.model import MultiTaskModel
from mtlora.tasks import IGNORE_INDEX, task_info

Variant = Literal[
    "config", "full", "decoders", "checkpointing", "selective", "config_full", "shared_only", "frozen_encoder"
]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass
class BenchSettings:
    """What to measure; see ``mtlora bench --help`` for the meaning of each field."""

    batch_size: int = 32
    img_size: int | None = None
    steps: int = 20
    warmup: int = 5
    precision: Precision = "auto"
    compile: bool | list[Variant] = False

    variants: list[Variant] = field(default_factory=lambda: ["config", "full", "decoders"])
    peak_tflops: float | None = None
    inference: bool = True
    repeats: int = 1
    seed: int = 0
    count_only: bool = False

    def compiles(self, variant: str) -> bool:
        """Whether ``variant`` is also measured under ``torch.compile`` (all, or the listed ones)."""
        return self.compile is True or (isinstance(self.compile, list) and variant in self.compile)


def synthetic_batch(
    task_channels: dict[str, int], batch_size: int, img_size: int, device: torch.device, seed: int = 0
) -> dict[str, Tensor]:
    """Random image and targets in the batch convention of :mod:`mtlora.tasks` (5% ignored pixels).

    Synthetic so that no data loading is timed.
    """
    g = torch.Generator().manual_seed(seed)
    b, s = batch_size, img_size
    batch: dict[str, Tensor] = {"image": torch.randn(b, 3, s, s, generator=g)}
    ignore = torch.rand(b, 1, s, s, generator=g) < 0.05
    for task, channels in task_channels.items():
        kind = task_info(task).kind
        if kind == "segmentation":
            target = torch.randint(0, channels, (b, s, s), generator=g)
            target[ignore[:, 0]] = IGNORE_INDEX
        elif kind == "binary":
            target = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
            target[ignore] = IGNORE_INDEX
        elif kind == "normals":
            target = torch.nn.functional.normalize(torch.randn(b, 3, s, s, generator=g), dim=1)
            target[ignore.expand_as(target)] = IGNORE_INDEX
        else:
            target = torch.rand(b, 1, s, s, generator=g) * 10
            target[ignore] = IGNORE_INDEX
        batch[task] = target
    return {k: v.to(device) for k, v in batch.items()}


def build_variant(template: MultiTaskModel, variant: Variant, img_size: int | None = None) -> MultiTaskModel:
    """A freshly initialised model of ``template``'s architecture, adapted as ``variant`` says.

    ``config_full`` trains every weight of the config's network (isolates what frozen weights
    save), ``shared_only`` drops the task streams (isolates what they cost), ``frozen_encoder``
    freezes the encoder but lets gradients cross it down to the patch embedding (the floor of any
    method that adapts every block).
    """
    encoder = replace(template.encoder_config, pretrained=None)
    if img_size is not None:
        encoder = replace(encoder, img_size=img_size)
    adapter = template.adapter_config
    if variant in ("full", "decoders"):
        adapter = replace(adapter, method=variant)
    elif variant == "checkpointing":
        encoder = replace(encoder, gradient_checkpointing=True)
    elif variant == "selective":
        encoder = replace(encoder, gradient_checkpointing="selective")
    elif variant == "shared_only":
        if not is_lora(adapter):
            raise ValueError(
                f"bench variant shared_only needs task streams to remove; adapter.method={adapter.method!r} has none"
            )
        adapter = replace(adapter, plan=["shared"] * len(template.plan.blocks))
    elif variant == "frozen_encoder":
        adapter = replace(adapter, method="decoders")
    model = MultiTaskModel(
        template.task_channels,
        encoder,
        adapter,
        copy.deepcopy(template.decoder_config),
        load_pretrained=False,
    )
    if variant == "config_full":
        model.requires_grad_(True)
    elif variant == "frozen_encoder":  # gradients must flow through every block down to the image stem
        model.backbone.patch_embed.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make merged == unmerged trivially true
        for layer in lora_layers(model).values():
            for p in (getattr(layer, n) for n in ("lora_shared_B", "lora_paths_B") if hasattr(layer, n)):
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    return model


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for ``precision == "bf16"``, a disabled one otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_loss(criterion: MultiTaskLoss, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    """The weighted sum of the task losses that a training step backpropagates."""
    losses = criterion(outputs, batch)
    return sum(criterion.weights[t] * losses[t] for t in criterion.tasks)


def make_train_step(
    model: nn.Module,
    criterion: MultiTaskLoss,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    precision: str,
) -> Callable[[dict[str, Tensor]], Tensor]:
    """One training step as a closure; no host synchronisation (no ``.item()``) inside."""

    def step(batch: dict[str, Tensor]) -> Tensor:
        with autocast(device, precision):
            outputs = model(batch["image"])
        total = training_loss(criterion, outputs, batch)
        del outputs  # the full-size outputs are freed before backward, as after a training_step
        total.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return total.detach()

    return step
