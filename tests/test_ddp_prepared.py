"""2-process DDP (gloo, CPU) over a prepared data set: one pass over every sample, same metrics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mtlora.cli import run_cli
from mtlora.data import PascalContextDataModule
from mtlora.data.prepared import prepare_dataset

from conftest import cli_subprocess
from fixtures_data import write_fake_pascal

TESTS = Path(__file__).parent
TASKS = ["semseg", "human_parts", "sal", "normals"]


def test_ddp_over_prepared_data_reads_each_sample_once_and_matches_one_process(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=8, n_val=5)
    prepared = tmp_path / "prepared"
    prepare_dataset(PascalContextDataModule(str(fake.root), tasks=TASKS), prepared)
    config = yaml.safe_load((TESTS / "configs" / "tiny_synthetic.yaml").read_text())
    config["data"] = {
        "class_path": "mtlora.data.PascalContextDataModule",
        "init_args": {
            "root": str(prepared),
            "tasks": TASKS,
            "img_size": 64,
            "batch_size": 2,
            "num_workers": 0,
        },
    }
    config["trainer"]["callbacks"] = [
        {"class_path": "record_sample_ids.RecordSampleIds", "init_args": {"out_dir": str(tmp_path / "ids")}}
    ]
    config["trainer"]["max_epochs"] = 2
    (tmp_path / "prepared.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", str(tmp_path / "prepared.yaml"), "--trainer.accelerator", "cpu"]

    fit_dir = tmp_path / "fit"
    cli_subprocess(
        [
            "fit",
            *common,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp_find_unused_parameters_true",  # the tiny test model leaves some parameters unused
            "--trainer.limit_val_batches",
            "0",
            "--trainer.default_root_dir",
            str(fit_dir),
            "--trainer.logger.init_args.save_dir",
            str(fit_dir),
        ],
        cwd=tmp_path,
    )
    seen = {rank: (tmp_path / "ids" / f"rank{rank}.txt").read_text().split("\n") for rank in (0, 1)}
    for epoch in ("0", "1"):
        per_rank = [
            [line.split()[1] for line in lines if line.split()[:1] == [epoch]] for lines in seen.values()
        ]
        assert len(per_rank[0]) == len(per_rank[1]) == 4  # 8 samples, 2 ranks, 2 batches of 2 each
        assert Counter(per_rank[0] + per_rank[1]) == Counter(fake.train)  # every sample exactly once

    ckpt = next(fit_dir.rglob("*.ckpt"))
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"validate_{devices}"
        extra = [
            "--ckpt_path",
            str(ckpt),
            "--trainer.devices",
            str(devices),
            "--trainer.callbacks",
            "[]",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(out),
        ]
        if devices == 1:
            run_cli(["validate", *common, *extra])
        else:
            cli_subprocess(["validate", *common, *extra, "--trainer.strategy", "ddp"], cwd=tmp_path)
        # a checkpoint of a run is evaluated inside that run
        evaluated = ckpt.parent.parent / f"validate-{ckpt.stem}" / "val_results.json"
        results[devices] = json.loads(evaluated.read_text())["metrics"]
    keys = [key for key in results[1] if not key.endswith("/loss")]  # batch-mean losses depend on batching
    assert len(keys) >= 10
    for key in keys:
        assert results[2][key] == pytest.approx(results[1][key], rel=1e-5, abs=1e-6), key
