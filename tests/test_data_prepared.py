"""Prepared (LitData) data sets: bit-identical samples, manifest, CLI and unfinished preparations."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch
import yaml

from mtlora.data import DataError, NYUDDataModule, PascalContextDataModule, check_data_folder
from mtlora.data.prepared import MANIFEST, decode_prepared, encode_sample, load_manifest, prepare_dataset
from mtlora.tools.data_cli import data_main

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


@pytest.fixture(scope="module")
def pascal_prepared(tmp_path_factory):
    """One fake PASCAL_MT folder and its preparation (LitData's optimize takes seconds to start)."""
    tmp = tmp_path_factory.mktemp("pascal")
    fake = write_fake_pascal(tmp / "PASCAL_MT", n_train=4, n_val=3)
    manifest = prepare_dataset(
        PascalContextDataModule(str(fake.root), tasks=PASCAL_TASKS, num_workers=0),
        tmp / "prep",
        num_workers=2,
    )
    return fake, tmp / "prep", manifest


def test_pascal_prepared_samples_are_bit_identical(pascal_prepared):
    fake, prep, manifest = pascal_prepared
    raw_dm = PascalContextDataModule(str(fake.root), tasks=PASCAL_TASKS, num_workers=0)
    prepared_dm = PascalContextDataModule(str(prep), tasks=PASCAL_TASKS, num_workers=0)
    assert prepared_dm.prepared == manifest
    for split in ("train", "val"):
        assert_same_samples(raw_dm, prepared_dm, split)
    assert manifest["splits"]["train"]["ids"] == fake.train
    assert manifest["tasks"] == PASCAL_TASKS and manifest["label_format"] == "raw"
    assert manifest["source"] == str(fake.root.resolve())
    assert manifest["source_files"] == sum(1 for p in fake.root.rglob("*") if p.is_file())
    assert manifest["source_bytes"] == sum(p.stat().st_size for p in fake.root.rglob("*") if p.is_file())
    assert manifest["litdata_version"] and manifest["mtlora_version"]


def test_png_label_format_round_trips_exactly(tmp_path):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT")
    reader = PascalContextDataModule(str(fake.root), tasks=PASCAL_TASKS).make_reader("train")
    for sample_id in fake.train:
        decoded = reader(sample_id)
        image_bytes = (fake.root / "JPEGImages" / f"{sample_id}.jpg").read_bytes()
        item = encode_sample(sample_id, image_bytes, decoded, label_format="png")
        assert isinstance(item["semseg"], bytes) and item["normals"].dtype == np.uint8
        got = decode_prepared(item, PASCAL_TASKS)
        for key, value in decoded.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value, err_msg=f"{sample_id} {key}")


@pytest.mark.parametrize("layout", ["NYUD_MT", "NYUDv2"])
def test_nyud_prepared_samples_are_bit_identical(tmp_path, layout):
    fake = write_fake_nyud(tmp_path / layout, layout=layout)
    raw_dm = NYUDDataModule(str(fake.root), num_workers=0)
    prepare_dataset(raw_dm, tmp_path / "prep", num_workers=2)
    prepared_dm = NYUDDataModule(str(tmp_path / "prep"), num_workers=0)
    for split in ("train", "val"):
        assert_same_samples(raw_dm, prepared_dm, split)
    assert prepared_dm.prepared["nyud_layout"] == layout


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_prepared_root_trains_through_the_loaders(pascal_prepared, augment_on):
    fake, prep, _ = pascal_prepared
    batches = {}
    for name, root in (("raw", fake.root), ("prepared", prep)):
        dm = PascalContextDataModule(
            str(root), num_workers=0, img_size=32, batch_size=2, augment_on=augment_on
        )
        dm.setup("fit")
        train = [dm.on_after_batch_transfer(batch, 0) for batch in dm.train_dataloader()]
        batches[name] = [train, list(dm.val_dataloader())]
    for raw_loader, prepared_loader in zip(*batches.values()):
        for raw_batch, prepared_batch in zip(raw_loader, prepared_loader):
            assert sorted(raw_batch) == sorted(prepared_batch)
            for key in raw_batch:
                if key == "normals" and augment_on == "device":  # float16 transfer vs 8-bit code
                    torch.testing.assert_close(raw_batch[key], prepared_batch[key], atol=2e-3, rtol=0)
                elif key != "meta":
                    assert torch.equal(raw_batch[key], prepared_batch[key]), key
            assert raw_batch["meta"] == prepared_batch["meta"]


def test_unfinished_preparation_is_redone_and_cli_prepares_from_config(tmp_path, monkeypatch, capsys):
    fake = write_fake_pascal(tmp_path / "PASCAL_MT")
    out = tmp_path / "prep"
    import litdata

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(litdata, "optimize", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare_dataset(PascalContextDataModule(str(fake.root), num_workers=0), out)
    assert out.is_dir() and not (out / MANIFEST).exists()
    with pytest.raises(DataError, match="unfinished preparation"):
        PascalContextDataModule(str(out), num_workers=0).setup("fit")

    config = tmp_path / "c.yaml"
    data = {"class_path": "mtlora.data.PascalContextDataModule", "init_args": {"root": "x", "tasks": ["sal"]}}
    config.write_text(yaml.safe_dump({"data": data}))
    argv = ["prepare", "--config", str(config), "--data.root", str(fake.root), "--out", str(out)]
    start_method = multiprocessing.get_start_method(allow_none=True)
    assert data_main([*argv, "--splits", "[train]"]) == 0
    assert multiprocessing.get_start_method(allow_none=True) == start_method  # litdata's change undone
    assert "train: 3" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tasks"] == ["sal"] and sorted(manifest["splits"]) == ["train"]
    with pytest.raises(DataError, match="--overwrite"):
        data_main(argv)

    with pytest.raises(DataError, match=r"lacks \['semseg'\]"):
        PascalContextDataModule(str(out), tasks=["semseg", "sal"], num_workers=0).setup("fit")
    with pytest.raises(DataError, match="prepared for PascalContextDataModule"):
        NYUDDataModule(str(out), tasks=["semseg"], num_workers=0).setup("fit")
    with pytest.raises(DataError, match="no prepared split 'val'"):
        PascalContextDataModule(str(out), tasks=["sal"], num_workers=0).setup("validate")
    with pytest.raises(DataError, match="is a prepared data set"):
        check_data_folder(PascalContextDataModule(str(out), tasks=["sal"]))
    other = tmp_path / "not_a_preparation"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="is not a preparation"):
        prepare_dataset(PascalContextDataModule(str(fake.root), num_workers=0), other)
    assert (other / "keep.txt").read_text() == "precious"
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(out)
