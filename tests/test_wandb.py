"""W&B: a 2-step offline fit through configs/logger/wandb.yaml, and the pieces it logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlora.cli import run_cli
from mtlora.data import SyntheticDataModule
from mtlora.training.wandb_callback import dataset_name, example_images

REPO = Path(__file__).parents[1]
TINY = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"


def test_offline_fit_logs_config_group_tags_summary_and_images(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # the CSV logger of the fragment writes to ./runs
    try:
        cli = run_cli(
            [
                "fit",
                "-c",
                str(TINY),
                "-c",
                str(REPO / "configs/logger/wandb.yaml"),
                "--data.init_args.tasks",
                "[semseg, normals]",
                "--data.init_args.train_size",
                "8",
                "--data.init_args.val_size",
                "4",
                "--trainer.max_steps",
                "2",
                "--trainer.enable_checkpointing",
                "false",
                "--model.delta_m_baseline",
                '{"semseg/mIoU": 10.0, "normals/mean": 40.0}',
            ]
        )
        run = wandb.run
        assert run is not None and run.offline
        config = dict(run.config)
        counts = cli.model.parameter_counts()
        assert config["trainable_params"] == counts["trainable"] and config["total_params"] == counts["total"]
        assert config["method"] == "MTLoRA r=4" and config["shared_rank"] == 4 and config["task_rank"] == 2
        assert config["tasks"] == ["semseg", "normals"]
        assert run.group == "synthetic" and run.job_type == "fit"
        assert {"mtlora", "MTLoRA r=4", "r4"} <= set(run.tags)
        summary = dict(run.summary)
        assert summary["best/val_delta_m"] == pytest.approx(
            float(cli.trainer.callback_metrics["val/delta_m"])
        )
        assert "val/examples/semseg" in summary and "val/examples/normals" in summary
    finally:
        wandb.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("run-*.wandb"))
    assert list((tmp_path / "runs").rglob("val_results.json"))  # CSV logging and results files as without W&B


def test_without_a_wandb_logger_nothing_is_added(tmp_path):
    cli = run_cli(
        [
            "fit",
            "-c",
            str(TINY),
            "--data.init_args.tasks",
            "[sal]",
            "--data.init_args.train_size",
            "4",
            "--data.init_args.val_size",
            "4",
            "--trainer.max_steps",
            "1",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    assert not any(type(c).__name__ == "WandbReporter" for c in cli.trainer.callbacks)


def test_dataset_group_names_and_example_images():
    data = SyntheticDataModule(
        tasks=["semseg", "sal", "normals", "depth"], img_size=64, train_size=2, val_size=2, batch_size=2
    )
    assert dataset_name(data) == "synthetic"
    assert dataset_name(type("PascalContextDataModule", (), {})()) == "pascal_context"
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    module = torch.nn.Module()
    module.forward = lambda image: {  # a stand-in model with the output convention of mtlora.tasks
        "semseg": torch.randn(image.shape[0], 21, 64, 64),
        "sal": torch.randn(image.shape[0], 1, 64, 64),
        "normals": torch.randn(image.shape[0], 3, 64, 64),
        "depth": torch.rand(image.shape[0], 1, 64, 64),
    }
    images = example_images(module, batch, count=2)
    rgb, kwargs = images["semseg"]
    assert rgb[0].shape == (64, 64, 3) and rgb[0].dtype.name == "uint8"
    mask = kwargs["masks"][0]
    assert (
        mask["prediction"]["mask_data"].shape == (64, 64) and mask["ground_truth"]["mask_data"].max() <= 255
    )
    assert set(images["sal"][1]["masks"][0]["prediction"]["mask_data"].ravel().tolist()) <= {0, 1}
    assert images["normals"][0][0].shape == (64, 128, 3)  # truth | prediction
    assert images["depth"][0][0].shape == (64, 128)
