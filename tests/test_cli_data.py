"""The paper configs train on real-format data folders (`--data.root`), and `mtlora data check` reports."""

from pathlib import Path

import pytest

from mtlora.cli import run_cli
from mtlora.data import DataError

from fixtures_data import snapshot, write_fake_nyud, write_fake_pascal

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = [
    "--model.encoder.pretrained",
    "null",
    "--model.encoder.embed_dim",
    "16",
    "--model.encoder.depths",
    "[2, 2, 2, 2]",
    "--model.encoder.num_heads",
    "[1, 2, 2, 4]",
    "--model.encoder.window_size",
    "2",
    "--model.encoder.drop_path_rate",
    "0.0",
    "--data.img_size",
    "64",
    "--data.batch_size",
    "2",
    "--data.num_workers",
    "0",
    "--trainer.max_steps",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.precision",
    "32-true",
    "--trainer.accelerator",
    "cpu",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
]


def run_fit(config, root, tmp_path, *extra):
    out = tmp_path / "runs"
    return run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            "--data.root",
            str(root),
            *TINY,
            "--trainer.default_root_dir",
            str(out),
            *extra,
        ]
    )


def test_paper_config_trains_on_pascal_folder_without_writing_into_it(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=4, n_val=2, size=(40, 52))
    before = snapshot(fake.root)
    cli = run_fit("swin_tiny_r16.yaml", fake.root, tmp_path)
    assert cli.trainer.global_step == 2
    assert cli.model.model.tasks == ["semseg", "human_parts", "sal", "normals"]
    assert "val/semseg/mIoU" in cli.trainer.callback_metrics and "val/delta_m" in cli.trainer.callback_metrics
    assert snapshot(fake.root) == before  # the data folder is only read


@pytest.mark.parametrize("layout", ["NYUD_MT", "NYUDv2"])
def test_nyud_config_trains_on_both_layouts(tmp_path, layout):
    fake = write_fake_nyud(tmp_path / layout, layout=layout, n_train=4, n_val=2, size=(40, 52))
    cli = run_fit("nyud_swin_tiny_r16.yaml", fake.root, tmp_path)
    assert cli.trainer.global_step == 2
    assert cli.model.model.decoder.heads["semseg"].last_layer[-1].out_channels == 40
    assert "val/depth/rmse" in cli.trainer.callback_metrics


def test_broken_file_stops_training_naming_the_file(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=4, n_val=2, size=(40, 52))
    for sample in fake.train + fake.val:
        (fake.root / "sal_distill" / f"{sample}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="sal_distill"):
        run_fit("swin_tiny_r16.yaml", fake.root, tmp_path)


def test_data_check_cli_lists_problems(tmp_path, capsys):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=3, n_val=2)
    run_cli(["data", "check", "--data.root", str(fake.root)])
    assert "OK" in capsys.readouterr().out
    (fake.root / "JPEGImages" / f"{fake.train[0]}.jpg").unlink()
    (fake.root / "sal_distill" / f"{fake.val[1]}.png").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as status:
        run_cli(
            ["data", "check", "--config", str(CONFIGS / "swin_tiny_r16.yaml"), "--data.root", str(fake.root)]
        )
    assert status.value.code == 1
    out = capsys.readouterr().out
    assert f"{fake.train[0]}.jpg" in out and f"{fake.val[1]}.png" in out and "missing" in out
