"""`mtlora validate/test` under 2-process DDP (gloo, CPU) reports the same metrics and losses as 1 process."""

import json
from pathlib import Path

import pytest

from mtlora.cli import run_cli

from conftest import cli_subprocess

CONFIG = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"


def test_ddp_metrics_equal_single_process(tmp_path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps",
            "3",
            "--model.delta_m_baseline",
            "pascal_context_swin_t",  # validate/test take it from the checkpoint
            "--trainer.limit_val_batches",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    ckpt = next(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    # 7 samples in batches of 3: rank 0 gets 4 (2 batches), rank 1 gets 3 (1 batch); a padding
    # sampler would count one image twice, and uneven batch counts must not hang
    common = [
        "--config",
        str(CONFIG),
        "--ckpt_path",
        str(ckpt),
        "--data.init_args.val_size",
        "7",
        "--data.init_args.test_size",
        "7",
        "--data.init_args.batch_size",
        "3",
        "--trainer.accelerator",
        "cpu",
    ]
    for stage, name in (("validate", "val"), ("test", "test")):
        results = {}
        for devices in (1, 2):
            out = tmp_path / f"{stage}_{devices}"
            extra = [
                "--trainer.devices",
                str(devices),
                "--trainer.logger.init_args.save_dir",
                str(out),
                "--trainer.default_root_dir",
                str(out),
            ]
            if devices == 1:
                run_cli([stage, *common, *extra])
            else:
                cli_subprocess([stage, *common, *extra, "--trainer.strategy", "ddp"], cwd=tmp_path)
            # a checkpoint of a run is evaluated inside that run
            evaluated = Path(cli.trainer.log_dir) / f"{stage}-{ckpt.stem}" / f"{name}_results.json"
            results[devices] = json.loads(evaluated.read_text())["metrics"]
        # every logged number, losses included (summed with their counts over ranks, not
        # averaged per rank), equals the 1-process value
        assert {f"{name}/loss", f"{name}/sal/loss", f"{name}/delta_m"} <= set(results[1])
        assert len(results[1]) >= 22 and set(results[2]) == set(results[1])
        for key in results[1]:
            assert results[2][key] == pytest.approx(results[1][key], rel=1e-5, abs=1e-6), (stage, key)
