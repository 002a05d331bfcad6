"""Adapter-only files: exact round trip on the same base, base identity, key/option checks, size, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mtlora.cli import run_cli
from mtlora.io.adapters import adapter_state_dict, base_weights_sha256, load_adapters, save_adapters
from mtlora.io.checkpoints import CheckpointError
from mtlora.models.merging import merge_model
from mtlora.models.model import EncoderConfig, MultiTaskModel
from mtlora.models.plans import AdapterConfig

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
CONFIGS = Path(__file__).parent / "configs"


def build(base_seed: int = 0, channels=PASCAL_CHANNELS, **adapter) -> MultiTaskModel:
    """A tiny model whose frozen base depends only on ``base_seed`` (the "pretrained" weights)."""
    torch.manual_seed(base_seed)
    options = {"shared_rank": 4, "task_rank": 2, **adapter}
    return MultiTaskModel(channels, tiny_encoder(), AdapterConfig(**options)).eval()


def trained(base_seed: int = 0) -> MultiTaskModel:
    model = build(base_seed)
    randomize_lora(model, seed=7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn_like(p) * 0.01)  # norms, heads, ... also trained
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model


def test_round_trip_on_the_same_base_is_exact(tmp_path):
    src = trained()
    path = tmp_path / "adapters.safetensors"
    metadata = save_adapters(src, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        stored = f.metadata()
    trainable = {n for n, p in src.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in src.named_buffers() if n in src.state_dict()}
    assert keys == trainable | buffers and any(k.endswith("running_var") for k in keys)
    assert not any(k.endswith(("qkv.linear.weight", "fc1.linear.weight")) for k in keys)  # no frozen base
    assert stored == metadata and json.loads(stored["config"]) == json.loads(json.dumps(src.config_dict()))
    assert stored["base_sha256"] == base_weights_sha256(src) and stored["base_source"] == ""

    dst = build()  # same base, fresh adapters and heads
    report = load_adapters(dst, path)
    assert not report.missing and not report.unexpected and set(report.loaded) == keys
    with torch.no_grad():
        ours, ref = dst(IMAGE), src(IMAGE)
    for task in PASCAL_CHANNELS:
        assert torch.equal(ours[task], ref[task]), task


def test_other_base_weights_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapters(trained(base_seed=0), path)
    other = build(base_seed=1)
    with pytest.raises(CheckpointError, match=r"trained on other base weights.*allow_base_mismatch=True"):
        load_adapters(other, path)
    with pytest.warns(UserWarning, match="allow_base_mismatch=True: loading anyway"):
        report = load_adapters(other, path, allow_base_mismatch=True)
    assert report.meta["base_sha256"] != report.meta["model_base_sha256"]


def test_missing_unexpected_and_option_differences_are_listed(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapters(trained(), path)
    task_path = "backbone.layers.0.blocks.1.mlp.fc1.lora_paths_A"
    no_task_paths = build(shared_mode="lora_only")  # same base and shapes, but no task-specific paths
    with pytest.raises(CheckpointError) as err:
        load_adapters(no_task_paths, path)
    message = str(err.value)
    assert f"unexpected: {task_path}" in message
    assert "config: adapter.shared_mode: checkpoint 'matrix', model 'lora_only'" in message
    report = load_adapters(no_task_paths, path, strict=False)
    assert task_path in report.unexpected and not report.missing

    other = tmp_path / "lora_only.safetensors"
    save_adapters(no_task_paths, other)
    report = load_adapters(build(), other, strict=False)
    assert task_path in report.missing and not report.unexpected

    scaled = build(shared_scale=2.0)  # same keys and shapes, other outputs
    with pytest.raises(CheckpointError, match=r"config: adapter.shared_scale: checkpoint 4.0, model 2.0"):
        load_adapters(scaled, path)

    fewer_tasks = build(channels={t: PASCAL_CHANNELS[t] for t in ("semseg", "sal", "normals")})
    with pytest.raises(
        CheckpointError, match=r"(?s)another architecture.*lora_paths_A: \[3, 2, 16\] vs \[4, 2, 16\]"
    ):
        load_adapters(fewer_tasks, path, strict=False)


def test_bad_files_and_merged_models(tmp_path):
    path = tmp_path / "a.safetensors"
    model = trained()
    save_adapters(model, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{path}.*truncated or corrupt"):
        load_adapters(model, path)
    import safetensors.torch

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not an mtlora adapter file"):
        load_adapters(model, plain)
    merge_model(model)
    with pytest.raises(ValueError, match="merged adapters"):
        adapter_state_dict(model)


def test_swin_tiny_r16_file_is_the_size_of_the_trainable_parameters(tmp_path):
    model = MultiTaskModel(
        PASCAL_CHANNELS, EncoderConfig(), AdapterConfig(shared_rank=16, task_rank=4), load_pretrained=False
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4_953_146  # the official r16 count
    path = tmp_path / "r16.safetensors"
    save_adapters(model, path)
    size = path.stat().st_size
    assert abs(size - 4 * trainable) / (4 * trainable) < 0.02, size  # ~19.8 MB; BN stats + header are tiny
    assert size < 0.2 * 4 * sum(p.numel() for p in model.parameters())


def test_cli_export_adapters_then_init_weights_reproduce_the_model(tmp_path):
    common = [
        "--config",
        str(CONFIGS / "tiny_synthetic.yaml"),
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
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    out = tmp_path / "adapters.safetensors"
    run_cli(["export_adapters", *common, "--ckpt_path", str(ckpt), "--out", str(out)])
    assert out.stat().st_size < 0.5 * ckpt.stat().st_size  # no optimizer state, no frozen base

    # another run starts from the adapter file on the same (seed_everything: 0, random) base weights
    cli2 = run_cli(
        [
            "validate",
            *common,
            "--model.init_weights",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "b"),
        ]
    )
    for name, value in cli.model.model.state_dict().items():
        assert torch.equal(value, cli2.model.model.state_dict()[name]), name
