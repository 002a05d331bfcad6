"""Prepared (LitData) data sets: bit-identical samples, manifest, CLI and unfinished preparations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mtlora.cli_data import data_main
from mtlora.data import DataError, NYUDDataModule, PascalContextDataModule
from mtlora.data.prepared import MANIFEST, load_manifest, prepare_dataset

try:
    from fixtures_data import write_fake_nyud, write_fake_pascal
except ImportError:  # tests/ imported as a package
    from tests.fixtures_data import write_fake_nyud, write_fake_pascal

PASCAL_TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]


def assert_same_samples(raw_dm, prepared_dm, split: str) -> None:
    raw = raw_dm.build_dataset(split, train=False)
    prepared = prepared_dm.build_dataset(split, train=False)
    assert prepared.ids == raw.ids
    for sample_id in raw.ids:
        expected, got = raw.read(sample_id), prepared.read(sample_id)
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype, (sample_id, key)
            np.testing.assert_array_equal(got[key], value, err_msg=f"{sample_id} {key}")


@pytest.mark.parametrize("label_format", ["raw", "png"])
def test_pascal_prepared_samples_are_bit_identical(tmp_path, label_format):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=4, n_val=3)
    raw_dm = PascalContextDataModule(str(fake.root), tasks=PASCAL_TASKS, num_workers=0)
    manifest = prepare_dataset(raw_dm, tmp_path / "prep", label_format=label_format)
    prepared_dm = PascalContextDataModule(str(tmp_path / "prep"), tasks=PASCAL_TASKS, num_workers=0)
    assert prepared_dm.prepared == manifest
    for split in ("train", "val"):
        assert_same_samples(raw_dm, prepared_dm, split)
    assert manifest["splits"]["train"]["ids"] == fake.train
    assert manifest["tasks"] == PASCAL_TASKS and manifest["label_format"] == label_format
    assert manifest["source"] == str(fake.root.resolve())
    assert manifest["source_files"] == sum(1 for p in fake.root.rglob("*") if p.is_file())
    assert manifest["source_bytes"] == sum(p.stat().st_size for p in fake.root.rglob("*") if p.is_file())
    assert manifest["litdata_version"] and manifest["mtlora_version"]


@pytest.mark.parametrize("layout", ["NYUD_MT", "NYUDv2"])
def test_nyud_prepared_samples_are_bit_identical(tmp_path, layout):
    fake = write_fake_nyud(tmp_path / layout, layout=layout)
    raw_dm = NYUDDataModule(str(fake.root), num_workers=0)
    prepare_dataset(raw_dm, tmp_path / "prep", num_workers=2)
    prepared_dm = NYUDDataModule(str(tmp_path / "prep"), num_workers=0)
    for split in ("train", "val"):
        assert_same_samples(raw_dm, prepared_dm, split)
    assert prepared_dm.prepared["nyud_layout"] == layout


def test_prepared_root_trains_through_the_loaders(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=4, n_val=2)
    raw_dm = PascalContextDataModule(str(fake.root), num_workers=0, img_size=32, batch_size=2, augment_on="cpu")
    prepare_dataset(raw_dm, tmp_path / "prep")
    batches = {}
    for name, root in (("raw", fake.root), ("prepared", tmp_path / "prep")):
        dm = PascalContextDataModule(str(root), num_workers=0, img_size=32, batch_size=2, augment_on="cpu")
        dm.setup("fit")
        batches[name] = [list(dm.train_dataloader()), list(dm.val_dataloader())]
    for raw_loader, prepared_loader in zip(*batches.values()):
        for raw_batch, prepared_batch in zip(raw_loader, prepared_loader):
            for key in raw_batch:
                if key != "meta":
                    assert np.array_equal(raw_batch[key].numpy(), prepared_batch[key].numpy()), key
            assert raw_batch["meta"] == prepared_batch["meta"]


def test_unfinished_preparation_is_not_a_prepared_root_and_is_redone(tmp_path, monkeypatch):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT")
    dm = PascalContextDataModule(str(fake.root), num_workers=0)
    import litdata

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(litdata, "optimize", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare_dataset(dm, tmp_path / "prep")
    assert (tmp_path / "prep").is_dir() and load_manifest(tmp_path / "prep") is None
    with pytest.raises(DataError, match="PASCAL-Context data not found"):
        PascalContextDataModule(str(tmp_path / "prep"), num_workers=0).setup("fit")
    prepare_dataset(dm, tmp_path / "prep")
    assert load_manifest(tmp_path / "prep") is not None
    with pytest.raises(DataError, match="--overwrite"):
        prepare_dataset(dm, tmp_path / "prep")


def test_prepared_root_rejects_other_tasks_and_data_class(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT")
    prepare_dataset(PascalContextDataModule(str(fake.root), tasks=["semseg"], num_workers=0), tmp_path / "p")
    with pytest.raises(DataError, match=r"lacks \['sal'\]"):
        PascalContextDataModule(str(tmp_path / "p"), tasks=["semseg", "sal"], num_workers=0).setup("fit")
    with pytest.raises(DataError, match="prepared for PascalContextDataModule"):
        NYUDDataModule(str(tmp_path / "p"), tasks=["semseg"], num_workers=0).setup("fit")
    (tmp_path / "p" / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path / "p")


def test_cli_prepare_from_config(tmp_path, capsys):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT")
    config = tmp_path / "c.yaml"
    data = {"class_path": "mtlora.data.PascalContextDataModule", "init_args": {"root": "x", "tasks": ["sal"]}}
    config.write_text(yaml.safe_dump({"data": data}))
    out = tmp_path / "prep"
    argv = ["prepare", "--config", str(config), "--data.root", str(fake.root), "--out", str(out)]
    assert data_main(argv) == 0
    assert "train: 3, val: 2" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tasks"] == ["sal"] and sorted(manifest["splits"]) == ["train", "val"]
