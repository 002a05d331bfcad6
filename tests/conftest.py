"""Shared test helpers: tiny Swin configurations that run in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# one intra-op thread: tiny test models gain nothing from more, and on a busy 2-core machine
# oversubscribed OpenMP threads made single steps 10-50x slower
torch.set_num_threads(1)

PASCAL_CHANNELS = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}


def tiny_encoder(**overrides):
    """A 4-stage Swin small enough for unit tests (64 px, window 2, shifts in stages 1-3)."""
    from mtlora.models.model import EncoderConfig

    base = dict(
        arch="swin_tiny",
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=2,
        img_size=64,
        drop_path_rate=0.0,
    )
    base.update(overrides)
    return EncoderConfig(**base)


@pytest.fixture
def tiny_encoder_config():
    return tiny_encoder()


def randomize_lora(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every low-rank B (zero at init) random values so adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and name.endswith("_B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
