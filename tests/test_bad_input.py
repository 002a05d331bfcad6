"""Bad input fails early with a message naming the option or file and what was expected.

Model-level checks are in test_model.py (unknown task, rank 0, window layout, adapter targets),
test_plans.py (plan validation), test_checkpoints_*.py (checkpoint files) and test_cli.py (option
typo, missing data folder); here each case is exercised the way a user meets it: through the CLI.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

from mtlora.cli import run_cli
from mtlora.io.checkpoints import CheckpointError

from fixtures_data import snapshot, write_fake_pascal

CONFIG = str(Path(__file__).parent / "configs" / "tiny_synthetic.yaml")
QUICK = [
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.limit_val_batches",
    "1",
    "--data.init_args.train_size",
    "8",
    "--data.init_args.val_size",
    "2",
]


def cli(command: str, tmp_path: Path, *extra: str):
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    return run_cli([command, "--config", CONFIG, *QUICK, *extra, *logs])


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the tiny config (shared rank 4) after two steps."""
    out = tmp_path_factory.mktemp("trained")
    cli("fit", out, "--trainer.max_steps", "2")
    return next(out.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "option,value,message",
    [
        (
            "--data.init_args.tasks",
            "[semseg, segm]",
            r"tasks: unknown task 'segm'; known tasks: semseg, human_parts",
        ),
        (
            "--model.adapter.shared_rank",
            "0",
            r"adapter.shared_rank must be a positive integer \(per stage\), got \[0",
        ),
        ("--model.adapter.task_rank", "[2, 2, -1, 2]", r"adapter.task_rank must be a positive integer"),
        ("--data.init_args.img_size", "60", r"img_size 60.*window"),
        ("--model.lr", ".nan", r"model.lr must be a finite number > 0, got nan"),
        ("--model.min_lr=-1e-6", None, r"model.min_lr must be a finite number >= 0, got -1e-06"),
        (
            "--model.loss_weights",
            "{sal: -1.0}",
            r"model.loss_weights.sal must be a finite number >= 0, got -1",
        ),
        ("--model.adapter.dropout", "1.5", r"adapter.dropout must be a finite number >= 0 and < 1, got 1.5"),
        (
            "--model.encoder.drop_path_rate",
            "1.0",
            r"encoder.drop_path_rate must be a finite number >= 0 and < 1",
        ),
        ("--model.encoder.window_size", "0", r"encoder.window_size must be an integer > 0, got 0"),
        ("--model.decoder.channels", "[18, 0, 72, 144]", r"decoder.channels must be an integer > 0, got 0"),
        (
            "--model.adapter.shared_rank",
            "[4, 4]",
            r"adapter.shared_rank: expected one value or 4 \(one per stage\)",
        ),
    ],
)
def test_bad_options(tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        cli("fit", tmp_path, option, *([] if value is None else [value]))  # None: "--option=value"


@pytest.mark.parametrize(
    "adapter,message",
    [
        (
            ["--model.adapter.method", "progressive", "--model.adapter.groups", "[]"],
            r"adapter.groups: expected one value or 4 \(one per stage\), got \[\]",
        ),
        (["--model.adapter.plan", "[shared, shared, [[segm]], tasks]"], r"unknown \['segm'\]"),
        (
            ["--model.adapter.plan", "[shared, shared, [[]], tasks]"],
            r"adapter.plan\[2\]\[0\]: empty task group",
        ),
        (["--model.adapter.plan", "[]"], r"adapter.plan: expected 4 stages, got 0"),
    ],
)
def test_plans_that_name_no_task(tmp_path, adapter, message):
    with pytest.raises(ValueError, match=message):
        cli("fit", tmp_path, *adapter)


def test_checkpoint_of_another_architecture_lists_shapes_and_options(tmp_path, trained_ckpt):
    # the CLI builds the model from the checkpoint's options, and says which config options they replace
    with pytest.warns(
        UserWarning,
        match=r"checkpoint's options, which replace the config's: adapter.shared_rank: "
        r"checkpoint 4, config 8",
    ):
        run = cli("validate", tmp_path, "--model.adapter.shared_rank", "8", "--ckpt_path", str(trained_ckpt))
    assert run.model.model.adapter_config.shared_rank == 4
    # the task list comes from the data: other tasks than the checkpoint's are another architecture
    with pytest.raises(CheckpointError) as err:
        cli(
            "validate",
            tmp_path,
            "--data.init_args.tasks",
            "[semseg, depth]",
            "--ckpt_path",
            str(trained_ckpt),
        )
    message = str(err.value)
    assert f"{trained_ckpt} is a checkpoint of another architecture" in message
    assert (
        "model.backbone.layers.0.blocks.1.attn.proj.lora_paths_A: model expects [2, 2, 16], checkpoint has "
        "[6, 2, 16]" in message
    )
    assert "not in the model: model.decoder.fusion.human_parts.downsample_0.weight" in message
    assert "task_channels.human_parts: checkpoint 7, model None" in message

    # Trainer API: a module of another rank
    from lightning.pytorch import Trainer

    from mtlora.data import SyntheticDataModule
    from mtlora.training.module import MultiTaskModule

    checkpoint = torch.load(trained_ckpt, weights_only=True)["hyper_parameters"]
    options = {k: v for k, v in checkpoint.items() if not k.startswith("_")}
    options["adapter"] = {**options["adapter"], "shared_rank": 8}
    module = MultiTaskModule(**options)
    dm = SyntheticDataModule(
        tasks=list(options["task_channels"]), img_size=64, batch_size=4, num_workers=0, val_size=4
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1)
    with pytest.raises(CheckpointError) as err:
        trainer.validate(module, dm, ckpt_path=trained_ckpt)
    message = str(err.value)
    assert "qkv.lora_shared_A: model expects [8, 16], checkpoint has [4, 16]" in message
    assert "adapter.shared_rank: checkpoint 4, model 8" in message


def test_truncated_and_unsafe_checkpoints_name_the_file(tmp_path, trained_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    data = trained_ckpt.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=rf"{truncated} .*truncated or corrupt"):
        cli("validate", tmp_path, "--ckpt_path", str(truncated))

    unsafe = tmp_path / "unsafe.ckpt"
    checkpoint = torch.load(trained_ckpt, weights_only=True)
    checkpoint["extra"] = Path("/pickled/object")  # any non-primitive object
    torch.save(checkpoint, unsafe)
    with pytest.raises(CheckpointError, match=rf"{unsafe} holds Python objects .*--weights_only false"):
        cli("validate", tmp_path, "--ckpt_path", str(unsafe))
    with pytest.warns(UserWarning, match="weights_only=False: unpickling can execute code"):
        cli("validate", tmp_path, "--ckpt_path", str(unsafe), "--weights_only", "false")


def test_config_file_typo_names_the_key(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  adapter:\n    shared_rnak: 8\n")
    with pytest.raises(SystemExit):
        cli("fit", tmp_path, "-c", str(typo))
    assert "shared_rnak" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("fit", tmp_path, "--model.adapter.shared_rank", "sixteen")
    err = capsys.readouterr().err
    assert "shared_rank" in err and "sixteen" in err


def test_read_only_data_folder_is_never_written(tmp_path, monkeypatch):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=4, n_val=2)
    before = snapshot(fake.root)
    paths = [fake.root, *fake.root.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs (runs/, lightning_logs/) go to the working folder
    try:
        for p in paths:
            p.chmod(stat.S_IMODE(modes[p]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        run_cli(
            [
                "fit",
                "--config",
                CONFIG,
                "--data",
                "mtlora.data.PascalContextDataModule",
                "--data.init_args.root",
                str(fake.root),
                "--data.init_args.tasks",
                "[semseg, human_parts, sal, normals]",
                "--data.init_args.img_size",
                "64",
                "--data.init_args.batch_size",
                "2",
                "--data.init_args.num_workers",
                "0",
                "--trainer.max_steps",
                "2",
                "--trainer.num_sanity_val_steps",
                "0",
                "--trainer.limit_val_batches",
                "1",
            ]
        )
    finally:
        for p in reversed(paths):
            p.chmod(modes[p])
    assert snapshot(fake.root) == before
    assert list(work.rglob("*.ckpt"))  # the run's outputs went to the working folder
