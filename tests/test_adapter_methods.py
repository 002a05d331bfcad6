"""Adapter methods register in one place: a toy method defined here alone trains, saves and reloads.

The toy method (a learned per-channel scale on every block's ``fc2`` output) lives only in this
file: registering it is all it takes for the CLI to accept ``--model.adapter.method toy``, for its
weights to train (found by module type, whatever their names) and for adapter files to carry them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from mtlora.cli import run_cli
from mtlora.io.adapters import load_adapters
from mtlora.models.methods import (
    AdapterMethod,
    AdapterModule,
    TrainableSet,
    adapter_method_names,
    adapter_parameter_names,
    get_adapter_method,
    register_adapter_method,
    unregister_adapter_method,
)
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, tiny_encoder

CONFIGS = Path(__file__).parent / "configs"


class ScaledLinear(AdapterModule):
    """``linear(x) * (1 + gain)``: one learned gain per output channel, zero (identity) at init."""

    frozen_children = ("linear",)

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.gain = nn.Parameter(torch.zeros(linear.out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) * (1 + self.gain)


def inject_toy(encoder, cfg, plans) -> list[str]:
    changed = []
    for i, j, blk in encoder.blocks():
        blk.mlp.fc2 = ScaledLinear(blk.mlp.fc2)
        changed.append(f"layers.{i}.blocks.{j}.mlp.fc2")
    return changed


@pytest.fixture
def toy():
    method = register_adapter_method(
        AdapterMethod("toy", inject_toy, TrainableSet(norms=True), label="Toy fc2 scale")
    )
    yield method
    unregister_adapter_method("toy")


def test_toy_method_trains_only_its_gains_and_the_norms(toy):
    model = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(method="toy"))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    gains = {f"layers.{i}.blocks.{j}.mlp.fc2.gain" for i, j, _ in model.backbone.blocks()}
    norms = {n for n, _ in model.backbone.named_parameters() if ".norm" in f".{n}"}
    assert set(adapter_parameter_names(model.backbone)) == gains
    # blocks' norm1/norm2, patch-merging and patch-embedding norms: weight + bias each
    assert trainable == gains | norms and len(norms) == 2 * (2 * len(gains) + 3 + 1)
    assert not model.backbone.get_parameter("layers.0.blocks.0.mlp.fc2.linear.weight").requires_grad
    off = MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(method="toy", train_norms=False))
    assert {n for n, p in off.backbone.named_parameters() if p.requires_grad} == gains


def test_toy_method_fits_through_the_cli_and_its_adapter_file_reloads(toy, tmp_path):
    common = [
        "--config",
        str(CONFIGS / "tiny_synthetic.yaml"),
        "--model.adapter.method",
        "toy",
        "--trainer.max_steps",
        "2",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "1",
        "--data.init_args.tasks",
        "[semseg, sal]",
        "--data.init_args.train_size",
        "8",
    ]
    cli = run_cli(["fit", *common, "--trainer.logger.init_args.save_dir", str(tmp_path / "a")])
    model = cli.model.model
    gain = model.backbone.get_parameter("layers.0.blocks.0.mlp.fc2.gain")
    assert gain.abs().sum() > 0  # trained away from its zero init
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    out = tmp_path / "toy.safetensors"
    run_cli(["export_adapters", *common, "--ckpt_path", str(ckpt), "--out", str(out)])

    fresh = MultiTaskModel(
        model.task_channels, model.encoder_config, model.adapter_config, load_pretrained=False
    )
    fresh.load_state_dict(
        {
            k: v
            for k, v in model.state_dict().items()
            if k in {n for n, p in model.named_parameters() if not p.requires_grad}
        },
        strict=False,
    )  # the same frozen base, nothing trained
    assert fresh.backbone.get_parameter("layers.0.blocks.0.mlp.fc2.gain").abs().sum() == 0
    report = load_adapters(fresh, out)
    assert not report.missing and not report.unexpected
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_registry_names_the_option_and_refuses_clashes(toy):
    assert {"mtlora", "progressive", "full", "decoders", "bitfit", "houlsby", "toy"} <= set(
        adapter_method_names()
    )
    with pytest.raises(ValueError, match=r"adapter.method: unknown 'mystery'; registered methods: \[.*'toy'"):
        MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(method="mystery"))
    with pytest.raises(ValueError, match="already registered"):
        register_adapter_method(AdapterMethod("toy"))
    with pytest.raises(ValueError, match=r"reads unknown AdapterConfig fields \['toy_width'\]"):
        register_adapter_method(AdapterMethod("toy2", reads=("toy_width",)))
    with pytest.raises(ValueError, match="runs one shared stream"):
        MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(method="toy", plan=["tasks"] * 4))
    with pytest.raises(ValueError, match="adapter.per_task: only for bitfit"):
        MultiTaskModel(PASCAL_CHANNELS, tiny_encoder(), AdapterConfig(method="toy", per_task=True))


def test_builtin_trainable_sets_are_named():
    cfg = AdapterConfig()
    assert get_adapter_method("mtlora").trainable_set(cfg) == TrainableSet(
        patch_embed=True, norms=True, relative_position_bias=True, patch_merging=True
    )
    plus = AdapterConfig(patch_merging=True, train_norms=False)
    assert get_adapter_method("mtlora").trainable_set(plus) == TrainableSet(
        patch_embed=True, relative_position_bias=True
    )
    assert get_adapter_method("bitfit").trainable_set(cfg) == TrainableSet(
        relative_position_bias=True, biases=True
    )
    assert get_adapter_method("houlsby").trainable_set(cfg) == TrainableSet(norms=True)
    assert get_adapter_method("mtlora").lora and not get_adapter_method("houlsby").lora
