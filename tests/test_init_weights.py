"""``model.init_weights``: official MTLoRA checkpoints and Lightning checkpoints as the start of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_checkpoints_official import (
    TASKS,
    fake_yacs,
    official_config,
    save_official,
    to_official,
    trained_model,
)

from mtlora.cli import run_cli
from mtlora.io.checkpoints import CheckpointError
from mtlora.models.plans import AdapterConfig
from mtlora.training.init_weights import parse_init_weights
from mtlora.training.module import MultiTaskModule

CONFIG = str(Path(__file__).parent / "configs" / "tiny_synthetic.yaml")
QUICK = "--trainer.num_sanity_val_steps 0 --trainer.limit_val_batches 1 --data.init_args.val_size 2"


def cli(command: str, logs: Path, options: str = "", *extra: str):
    """``mtlora <command>`` on the tiny synthetic config (8 training images, 2 steps per epoch)."""
    args = [command, "--config", CONFIG, *QUICK.split(), "--data.init_args.train_size", "8"]
    args += [*options.split(), *extra, "--trainer.logger.init_args.save_dir", str(logs)]
    return run_cli(args)


def test_parse_init_weights():
    assert parse_init_weights("official:/x/a.safetensors") == ("official", "/x/a.safetensors")
    assert parse_init_weights("runs/a.safetensors") == ("adapters", "runs/a.safetensors")
    assert parse_init_weights("runs/last.ckpt") == ("lightning", "runs/last.ckpt")
    assert parse_init_weights("ckpt_epoch_299.pth") == ("official", "ckpt_epoch_299.pth")
    assert parse_init_weights("C:/weights.ckpt") == ("lightning", "C:/weights.ckpt")


def test_validate_from_an_official_checkpoint(tmp_path, monkeypatch):
    yacs, yacs_config, cfg_node = fake_yacs()
    src = trained_model(AdapterConfig(shared_rank=4, task_rank=2))
    path = tmp_path / "ckpt_epoch_3.pth"
    save_official(
        path, to_official(src), (yacs, yacs_config, official_config(cfg_node, TASKS, 4, 2)), monkeypatch
    )
    pascal = f"--data.init_args.tasks [{','.join(TASKS)}] --model.encoder.drop_path_rate 0.0"
    run = cli("validate", tmp_path / "logs", pascal, "--model.init_weights", f"official:{path}")
    loaded = run.model.model.state_dict()
    for key, value in src.state_dict().items():
        assert torch.equal(loaded[key], value), key

    with pytest.raises(
        CheckpointError, match=r"(?s)another architecture.*qkv.lora_shared_A: \[8, 16\] vs \[4, 16\]"
    ):
        cli(
            "validate",
            tmp_path / "logs",
            pascal + " --model.adapter.shared_rank 8",
            "--model.init_weights",
            str(path),
        )


def test_lightning_checkpoint_weights_start_a_new_run_and_resume_ignores_init_weights(tmp_path):
    first = cli("fit", tmp_path / "a", "--trainer.max_steps 2")
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    second = cli("validate", tmp_path / "b", "", "--model.init_weights", str(ckpt))
    for key, value in first.model.model.state_dict().items():
        assert torch.equal(value, second.model.model.state_dict()[key]), key

    # resuming restores everything from --ckpt_path: init_weights (here a missing file) is not read
    resumed = cli(
        "fit",
        tmp_path / "c",
        "--trainer.max_epochs 2",
        "--ckpt_path",
        str(ckpt),
        "--model.init_weights",
        "absent.pth",
    )
    assert resumed.trainer.global_step == 4
    # a module loaded from a checkpoint keeps the checkpoint's weights when it is fitted further
    loaded = MultiTaskModule.load_from_checkpoint(ckpt, weights_only=True, init_weights="absent.pth")
    assert loaded._init_weights_pending is None and not loaded._pretrained_pending


def test_ckpt_path_reads_nothing_but_the_checkpoint(tmp_path, monkeypatch):
    """A run started from a ``timm:`` encoder and an ``init_weights`` file that has since moved is
    evaluated, predicted and resumed offline: the checkpoint holds every weight."""
    import socket

    import mtlora.training.init_weights
    from mtlora.models.model import MultiTaskModel

    cli("fit", tmp_path / "a", "--trainer.max_steps 2")
    start = tmp_path / "start.ckpt"
    next((tmp_path / "a").rglob("*.ckpt")).rename(start)
    cli("fit", tmp_path / "b", "--trainer.max_steps 2", "--model.init_weights", str(start))
    ckpt = next((tmp_path / "b").rglob("*.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["hyper_parameters"]["init_weights"] == str(start)
    checkpoint["hyper_parameters"]["encoder"]["pretrained"] = "timm:swin_tiny_patch4_window7_224.ms_in1k"
    torch.save(checkpoint, ckpt)
    start.rename(tmp_path / "moved.ckpt")

    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    def must_not_load(*args, **kwargs):
        raise AssertionError("initial weights were read although --ckpt_path holds every weight")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(MultiTaskModel, "load_pretrained", must_not_load)
    monkeypatch.setattr(mtlora.training.init_weights, "load_init_weights", must_not_load)
    for command in ("validate", "test"):
        run = cli(command, tmp_path / "c", "", "--ckpt_path", str(ckpt))
        for key, value in run.model.state_dict().items():
            assert torch.equal(value, checkpoint["state_dict"][key]), (command, key)
    cli(
        "predict", tmp_path / "c", "--trainer.default_root_dir", str(tmp_path / "c"), "--ckpt_path", str(ckpt)
    )
    assert len(list((tmp_path / "c").rglob("predictions/*.png"))) == 8
    resumed = cli("fit", tmp_path / "d", "--trainer.max_epochs 2", "--ckpt_path", str(ckpt))
    assert resumed.trainer.global_step == 4

    # without a checkpoint the same options do read them: the failure names the moved file
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=str(start)):
        cli("validate", tmp_path / "e", "", "--model.init_weights", str(start))
