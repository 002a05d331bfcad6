"""Device-independent counts of a bench variant on fake tensors: FLOPs, saved activations, peak memory.

The FLOPs are those a training step actually needs, counted by ``FlopCounterMode`` (through
Lightning's ``measure_flops``) around forward + loss + backward of one image in train mode
without gradient checkpointing (matmuls, convolutions, attention; element-wise work is not
counted, as usual for MFU).  For full fine-tuning that is about 3x the forward; for PEFT the
backward through frozen weights has no weight-gradient GEMMs and stops below the lowest trainable
parameter, so it is less.  Recomputation by checkpointing is not model FLOPs, hence counted
without it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from mtlora.bench.memory import (
    TensorMemoryMeter,
    count_dropout_as_cuda,
    fake_model,
    new_fake_mode,
    storage_bytes,
    to_fake,
)
from mtlora.bench.variants import (
    BenchSettings,
    Variant,
    autocast,
    build_variant,
    make_train_step,
    synthetic_batch,
    training_loss,
)
from mtlora.losses import MultiTaskLoss
from mtlora.models.lora import lora_layers
from mtlora.models.merging import merge_model
from mtlora.models.model import MultiTaskModel, parameter_counts


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether ``model`` has low-rank adapter weights (and so a merged form to compare)."""
    return bool(lora_layers(model))


def measure_flops(model: torch.nn.Module, forward, loss=None) -> int:
    """Lightning's ``measure_flops``, imported when counting (rendering a report needs no Lightning)."""
    from lightning.fabric.utilities.throughput import measure_flops as lightning_measure_flops

    return lightning_measure_flops(model, forward, loss)


def forward_flops(model: MultiTaskModel, image: Tensor, precision: str) -> float:
    """FLOPs of an eval-mode forward of ``image`` without gradients."""
    model.eval()

    def forward():
        with torch.no_grad(), autocast(image.device, precision):
            return model(image)

    return float(measure_flops(model, forward))


def saved_activation_bytes(
    model: MultiTaskModel, criterion: MultiTaskLoss, batch: dict[str, Tensor], precision: str
) -> int:
    """Bytes the autograd graph of one training forward + loss keeps for backward.

    The storages created by the forward and the loss that are still alive once the outputs are
    dropped: what autograd saved (with checkpointing: the block inputs, or what the selective
    policy keeps), exact, unlike a process' resident set.  Parameters are not counted.
    """
    model.train()
    with TensorMemoryMeter() as meter:
        with autocast(batch["image"].device, precision):
            outputs = model(batch["image"])
        total = training_loss(criterion, outputs, batch)
        del outputs
        saved = meter.live - total.untyped_storage().nbytes()
    del total
    return saved


def train_flops_per_image(
    model: MultiTaskModel, criterion: MultiTaskLoss, batch: dict[str, Tensor], precision: str
) -> tuple[float, float]:
    """(training, forward) FLOPs of one image, counted on the first image of ``batch``."""
    one = {k: v[:1] for k, v in batch.items()}
    device = one["image"].device
    was_training = model.training
    cfg = model.backbone.cfg
    model.backbone.cfg = replace(cfg, gradient_checkpointing=False)  # recomputation is not model FLOPs
    try:
        model.train()

        def forward():
            with autocast(device, precision):
                return model(one["image"])

        train = float(measure_flops(model, forward, lambda outputs: training_loss(criterion, outputs, one)))
        model.zero_grad(set_to_none=True)
        forward_only = forward_flops(model, one["image"], precision)
    finally:
        model.backbone.cfg = cfg
        model.train(was_training)
    return train, forward_only


def count_variant(
    template: MultiTaskModel,
    variant: Variant,
    criterion: MultiTaskLoss,
    settings: BenchSettings,
    precision: str,
) -> dict:
    """Device-independent counts of one variant, on fake tensors (no compute, no memory).

    FLOPs per image (training and forward, also merged), bytes autograd saves for backward, and
    the peak tensor memory of training (weights + gradients + AdamW state + activations, over two
    steps, so that the optimizer state exists) at the bench's batch size, image size and
    precision.  Kernels are those of the CPU (e.g. its attention kernel's saved tensors), which
    keep the same tensors as CUDA's for this model up to small workspaces; dropout is counted
    with CUDA's one-byte mask (:func:`~mtlora.bench.memory.count_dropout_as_cuda`).
    """
    model = count_dropout_as_cuda(build_variant(template, variant, settings.img_size))
    weights = storage_bytes([*model.parameters(), *model.buffers()])
    img = model.encoder_config.img_size
    mode = new_fake_mode()
    fake_model(model, mode)
    cpu = torch.device("cpu")
    batch = to_fake(synthetic_batch(model.task_channels, settings.batch_size, img, cpu, settings.seed), mode)
    with mode:
        train_flops, fwd_flops = train_flops_per_image(model, criterion, batch, precision)
        saved = saved_activation_bytes(model, criterion, batch, precision)
        with TensorMemoryMeter() as meter:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True)
            step = make_train_step(model, criterion, optimizer, cpu, precision)
            for _ in range(2):
                step(batch)
        del optimizer, step, params
        merged_flops = None
        if has_adapters(model):
            merge_model(model.eval())
            merged_flops = forward_flops(model, batch["image"][:1], precision)
    return {
        "method": model.adapter_config.method,
        "gradient_checkpointing": model.encoder_config.gradient_checkpointing,
        "parameters": parameter_counts(model),
        "train_flops_per_image": train_flops,
        "forward_flops_per_image": fwd_flops,
        "merged_forward_flops_per_image": merged_flops,
        "saved_activation_bytes": saved,
        "counted_peak_memory_bytes": weights + meter.peak,
    }
