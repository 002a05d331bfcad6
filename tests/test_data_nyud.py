"""NYUD reader: both layouts, label shift, layout detection, batches and the missing-root error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mtlora.data import DataError, DataRootNotFoundError, NYUDDataModule
from mtlora.data.check import check_data_folder

try:
    from fixtures_data import write_fake_nyud
except ImportError:  # tests/ imported as a package
    from tests.fixtures_data import write_fake_nyud


@pytest.mark.parametrize("layout", ["NYUD_MT", "NYUDv2"])
def test_both_layouts_decode_every_task(tmp_path, layout):
    fake = write_fake_nyud(tmp_path / layout, layout=layout)
    dm = NYUDDataModule(str(fake.root), num_workers=0, img_size=32, batch_size=2)
    assert dm.layout == layout
    sample = dm.make_reader("train")(fake.train[0])
    np.testing.assert_array_equal(sample["semseg"], fake.semseg[fake.train[0]])
    np.testing.assert_allclose(sample["depth"], fake.depth[fake.train[0]])
    np.testing.assert_allclose(sample["normals"], fake.normals[fake.train[0]], atol=1e-6)
    np.testing.assert_array_equal(sample["edge"], fake.edge[fake.train[0]])
    assert sample["image"].shape == (*fake.size, 3) and sample["image"].dtype == np.uint8


def test_segmentation_labels_shift_by_one_and_zero_is_ignored(tmp_path):
    fake = write_fake_nyud(tmp_path / "N")
    semseg = NYUDDataModule(str(fake.root), num_workers=0).make_reader("val")(fake.val[0])["semseg"]
    h, w = fake.size
    assert semseg[0, 0] == 255  # raw 0 (unlabelled)
    assert semseg[0, w // 4] == 0  # raw 1
    assert semseg[0, -1] == 39  # raw 40
    assert semseg[-1, 0] == 16  # raw 17


def test_batches_and_channels(tmp_path):
    fake = write_fake_nyud(tmp_path / "N")
    dm = NYUDDataModule(str(fake.root), num_workers=0, img_size=32, batch_size=2)
    assert dm.task_channels == {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["semseg"].shape == (2, 32, 32) and batch["semseg"].dtype == torch.int64
    assert batch["depth"].shape == (2, 1, 32, 32) and batch["depth"].dtype == torch.float32
    assert batch["normals"].shape == (2, 3, 32, 32) and batch["edge"].shape == (2, 1, 32, 32)
    valid = batch["normals"][:, 0] != 255
    torch.testing.assert_close(batch["normals"].norm(dim=1)[valid], torch.ones(int(valid.sum())))
    assert set(torch.unique(batch["edge"]).tolist()) <= {0.0, 1.0, 255.0}
    depth = batch["depth"][batch["depth"] != 255]
    assert depth.min() > 0 and depth.max() < 5.01 / 1.0  # zoom >= 1 only brings depths closer


def test_forced_layout_and_undetectable_layout(tmp_path):
    fake = write_fake_nyud(tmp_path / "N", layout="NYUDv2")
    with pytest.raises(DataError, match="images"):
        NYUDDataModule(str(fake.root), layout="NYUD_MT", num_workers=0).make_reader("train")(fake.train[0])
    for path in (fake.root / "images").iterdir():
        path.rename(path.with_suffix(".bmp"))
    with pytest.raises(DataError, match="layout"):
        NYUDDataModule(str(fake.root), num_workers=0).setup("fit")


def test_missing_root_names_the_source_and_the_demo(tmp_path):
    module = NYUDDataModule(str(tmp_path / "NYUD_MT"))  # building needs no data (e.g. `mtlora summary`)
    assert module.task_channels == {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}
    with pytest.raises(DataRootNotFoundError) as info:
        module.prepare_data()  # the first thing `fit` does
    with pytest.raises(DataRootNotFoundError):
        module.setup("fit")
    message = str(info.value)
    for expected in (
        str(tmp_path / "NYUD_MT"),
        "14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw",
        "gt_sets",
        "configs/demo.yaml",
    ):
        assert expected in message, expected
    with pytest.raises(ValueError, match="human_parts"):
        NYUDDataModule(str(tmp_path), tasks=["human_parts"])


def test_mis_sized_depth_names_the_file(tmp_path):
    fake = write_fake_nyud(tmp_path / "N")
    path = fake.root / "depth" / f"{fake.train[0]}.npy"
    np.save(path, np.ones((3, 3), np.float32))
    with pytest.raises(DataError, match=str(path)):
        NYUDDataModule(str(fake.root), num_workers=0).make_reader("train")(fake.train[0])


def test_all_nan_depth_map_is_a_named_skippable_error(tmp_path, caplog):
    fake = write_fake_nyud(tmp_path / "NYUD_MT", n_train=3)
    broken = fake.root / "depth" / f"{fake.train[1]}.npy"
    depth = np.full(fake.size, np.nan, dtype=np.float32)
    depth[0, :3] = np.inf
    np.save(broken, depth)
    options = {"tasks": ["depth"], "batch_size": 2, "num_workers": 0, "img_size": 32}
    dm = NYUDDataModule(str(fake.root), **options)
    dm.setup("fit")
    with pytest.raises(DataError, match=rf"{broken}: depth map has no finite value"):
        dm.datasets["train"][1]
    skipping = NYUDDataModule(str(fake.root), skip_broken=True, **options)
    skipping.setup("fit")
    with caplog.at_level(logging.WARNING, logger="mtlora.data.datamodule"):
        assert skipping.datasets["train"][1]["meta"]["id"] == fake.train[2]
    assert skipping.skipped_count == 1 and str(broken) in caplog.text
    report = check_data_folder(dm, splits=["train"])
    assert [(p.path, p.problem) for p in report.problems] == [(str(broken), "unreadable")]
    assert report.splits["train"].complete == {"depth": 2}
