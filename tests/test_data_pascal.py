"""PASCAL-Context reader: decoding of every file format, errors, skip_broken, read-only folders."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest
import torch

from mtlora.data import DataError, DataRootNotFoundError, PascalContextDataModule
from mtlora.data.check import check_data_folder
from mtlora.data.pascal_context import human_part_ids, normals_valid_context_ids

try:
    from fixtures_data import positional_parts, snapshot, write_fake_pascal
except ImportError:  # tests/ imported as a package
    from tests.fixtures_data import positional_parts, snapshot, write_fake_pascal

ALL = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture
def fake(tmp_path):
    return write_fake_pascal(tmp_path / "PASCAL_MT", n_train=3, n_val=2)


def module(fake, **kwargs) -> PascalContextDataModule:
    options = {"tasks": ALL, "batch_size": 2, "num_workers": 0, "img_size": 32}
    options.update(kwargs)
    return PascalContextDataModule(str(fake.root), **options)


def decode(fake, sample_id, tasks=ALL):
    return module(fake, tasks=tasks).make_reader("train")(sample_id)


def test_fixture_keeps_the_pascal_part_struct_layout(fake):
    objects = positional_parts(fake.root / "human_parts" / f"{fake.train[0]}.mat")
    assert objects == [
        (15, ["hair", "head", "torso", "llarm", "ruleg", "lfoot"]),
        (15, []),
        (15, []),
        (12, ["head"]),
    ]


def test_class_lists_from_package_data():
    assert len(normals_valid_context_ids()) == 170
    assert sorted(set(human_part_ids().values())) == [1, 2, 3, 4, 5, 6]


def test_human_parts_mapping_and_images_without_parts(fake):
    with_parts, only_cat, person_without_parts = fake.train
    decoded = decode(fake, with_parts)["human_parts"]
    np.testing.assert_array_equal(decoded, fake.parts[with_parts])
    assert decoded[0, 0] == 1 and decoded[6, 0] == 2 and decoded[10, 0] == 4  # hair->head, torso, llarm
    assert np.all(decoded[:4, 16:] == 0)  # the dog's 'head' part is not a person part
    assert np.all(decode(fake, only_cat)["human_parts"] == 255)  # no person: ignored
    assert np.all(decode(fake, person_without_parts)["human_parts"] == 255)


def test_semseg_prefers_voc12_palette_png_over_pascal_context(fake):
    voc_id, context_id = fake.train[0], fake.train[1]
    assert voc_id in fake.voc12_ids and context_id not in fake.voc12_ids
    np.testing.assert_array_equal(decode(fake, voc_id)["semseg"], fake.semseg[voc_id])
    np.testing.assert_array_equal(decode(fake, context_id)["semseg"], fake.semseg[context_id])
    assert decode(fake, voc_id)["semseg"].max() == 255 and 7 in decode(fake, voc_id)["semseg"]


def test_saliency_threshold_and_normals_mask(fake):
    sample = decode(fake, fake.train[0])
    np.testing.assert_array_equal(sample["sal"], fake.sal[fake.train[0]])  # 127 -> 0, 128 -> 1
    assert set(np.unique(sample["sal"])) == {0, 1}
    np.testing.assert_allclose(sample["normals"], fake.normals[fake.train[0]], atol=1e-6)
    h, w = fake.size
    assert np.all(sample["normals"][:, w // 2 : 3 * w // 4] == 0)  # aeroplane: not an NYU class
    assert np.all(sample["normals"][-1, -1] != 0)  # tvmonitor: valid


def test_edges_are_thin_label_map_boundaries(fake):
    edge = decode(fake, fake.train[0], tasks=["edge"])["edge"]
    label_map = fake.label_map[fake.train[0]]
    changes = np.zeros_like(edge, dtype=bool)
    changes[:, 1:] |= label_map[:, 1:] != label_map[:, :-1]
    changes[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    changes[1:, :] |= label_map[1:, :] != label_map[:-1, :]
    changes[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    assert edge.any() and np.all(changes[edge.astype(bool)])  # edges only on boundaries
    h, w = fake.size
    assert np.all(edge[1 : 3 * h // 4 - 1, w // 2 - 1 : w // 2 + 1].sum(axis=1) == 1)  # one pixel wide


def test_batches_follow_the_task_convention(fake):
    dm = module(fake)
    assert dm.task_channels == {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1}
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))  # decoded only: augmented after the device transfer
    assert raw["image"].dtype == torch.uint8 and raw["semseg"].shape == (2, *fake.size)
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["semseg"].dtype == torch.int64 and batch["human_parts"].shape == (2, 32, 32)
    assert batch["sal"].shape == (2, 1, 32, 32) and batch["normals"].shape == (2, 3, 32, 32)
    assert batch["meta"]["size"] == [fake.size, fake.size]
    val = list(dm.val_dataloader())
    assert sum(b["image"].shape[0] for b in val) == 2
    assert PascalContextDataModule(str(fake.root), num_workers=0).tasks == [
        "semseg",
        "human_parts",
        "sal",
        "normals",
    ]


def test_original_resolution_evaluation_uses_batch_size_one(fake):
    dm = module(fake, eval_resolution="original", tasks=["semseg", "normals"])
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert len(batches) == 2
    assert batches[0]["image"].shape == (1, 3, 32, 32)
    assert batches[0]["semseg"].shape == (1, *fake.size) and batches[0]["normals"].shape == (1, 3, *fake.size)


def test_only_files_of_the_chosen_tasks_are_read(fake):
    import shutil

    for folder in ("human_parts", "normals_distill", "pascal-context", "sal_distill"):
        shutil.rmtree(fake.root / folder)
    dm = module(fake, tasks=["semseg"])
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["semseg"].shape == (2, 32, 32)
    with pytest.raises(DataError, match="normals_distill"):
        module(fake, tasks=["semseg", "normals"]).setup("fit")


def test_missing_root_says_where_and_how_to_get_the_data(tmp_path):
    module = PascalContextDataModule(str(tmp_path / "nowhere"))  # building needs no data (`mtlora summary`)
    assert module.task_channels == {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}
    with pytest.raises(DataRootNotFoundError) as info:
        module.prepare_data()  # the first thing `fit` does
    with pytest.raises(DataRootNotFoundError):
        module.setup("fit")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)
    for expected in (
        str(tmp_path / "nowhere"),
        "JPEGImages",
        "ImageSets/Context",
        "PASCAL_MT.tgz",
        "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz",
        "configs/demo.yaml",
    ):
        assert expected in message, expected
    with pytest.raises(ValueError, match="depth"):
        PascalContextDataModule(str(tmp_path), tasks=["semseg", "depth"])


def test_broken_file_error_names_the_file(fake):
    broken = fake.root / "JPEGImages" / f"{fake.train[1]}.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    dm = module(fake, tasks=["semseg"])
    dm.setup("fit")
    with pytest.raises(DataError, match=str(broken)):
        dm.datasets["train"][1]


def test_mis_sized_label_error_names_the_file(fake):
    from PIL import Image

    path = fake.root / "sal_distill" / f"{fake.train[0]}.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    with pytest.raises(DataError, match=rf"{path}.*5x5 differs"):
        decode(fake, fake.train[0], tasks=["sal"])


def test_skip_broken_replaces_and_counts(fake, caplog):
    (fake.root / "human_parts" / f"{fake.train[1]}.mat").write_bytes(b"garbage")
    dm = module(fake, tasks=["human_parts"], skip_broken=True)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    with caplog.at_level(logging.WARNING, logger="mtlora.data.datamodule"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [s["meta"]["id"] for s in samples] == [fake.train[0], fake.train[2], fake.train[2]]
    assert dataset.skipped_count == 1 and dm.skipped_count == 1
    assert list(dataset.skipped) == [fake.train[1]]
    assert "skipping broken sample" in caplog.text and fake.train[1] in caplog.text


def test_read_only_folder_is_never_written(fake):
    before = snapshot(fake.root)
    paths = [fake.root, *fake.root.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(stat.S_IMODE(modes[p]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        dm = module(fake, num_workers=0)
        dm.setup("fit")
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _ in loader:
                pass
    finally:
        for p in reversed(paths):
            p.chmod(modes[p])
    assert snapshot(fake.root) == before
    assert not (fake.root / "ImageSets" / "Parts").exists()
    assert os.access(fake.root, os.W_OK)


def test_stale_parts_cache_never_switches_human_parts_off(tmp_path):
    """Training and `data check` both decode the .mat files, whatever an official Parts cache says."""
    fake = write_fake_pascal(tmp_path / "P", n_train=3, n_val=1, parts_cache=True)
    person = fake.train[0]
    cache = fake.root / "ImageSets" / "Parts" / "train.txt"
    cache.write_text(json.dumps({i: [] for i in fake.train}))  # claims: no person anywhere
    reader = module(fake, tasks=["human_parts"]).make_reader("train")
    np.testing.assert_array_equal(reader(person)["human_parts"], fake.parts[person])
    assert (reader(person)["human_parts"] != 255).any()
    # `mtlora data check` reads the same file through the same decoder
    dm = module(fake, tasks=["human_parts"])
    (spec,) = [f for f in dm.sample_files(person) if f.kind == "human_parts"]
    np.testing.assert_array_equal(spec.read(spec.path), reader(person)["human_parts"])
    assert check_data_folder(dm, splits=["train"]).ok


def test_image_over_the_decompression_bomb_limit_is_a_skippable_data_error(fake, monkeypatch, caplog):
    from PIL import Image

    dm = module(fake, tasks=["semseg"])
    dm.setup("fit")
    big = fake.root / "JPEGImages" / f"{fake.train[1]}.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(big)  # 1600 px, the others 768
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 780)  # PIL refuses above 2x this limit
    with pytest.raises(DataError, match=rf"{big}: image too large to decode"):
        dm.datasets["train"][1]
    skipping = module(fake, tasks=["semseg"], skip_broken=True)
    skipping.setup("fit")
    with caplog.at_level(logging.WARNING, logger="mtlora.data.datamodule"):
        assert skipping.datasets["train"][1]["meta"]["id"] == fake.train[2]
    assert skipping.skipped_count == 1 and "too large" in caplog.text
    problems = check_data_folder(module(fake, tasks=["semseg"]), splits=["train"]).problems
    assert [(p.sample_id, p.kind, p.problem) for p in problems] == [(fake.train[1], "image", "unreadable")]


def test_split_file_with_a_utf8_byte_order_mark(fake):
    split = fake.root / "ImageSets" / "Context" / "train.txt"
    split.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(fake.train).encode() + b"\r\n")
    dm = module(fake, tasks=["semseg"])
    assert dm.split_ids("train") == fake.train
    dm.setup("fit")
    assert dm.datasets["train"][0]["meta"]["id"] == fake.train[0]
    assert check_data_folder(dm, splits=["train"]).ok


def test_opencv_failure_in_the_transform_is_a_named_data_error(fake, monkeypatch):
    import cv2

    import mtlora.data.transforms as transforms

    def refuse(*args, **kwargs):  # what OpenCV raises past its size limits
        raise cv2.error("OpenCV(5.0) error: (-215:Assertion failed) src.cols < SHRT_MAX")

    dm = module(fake, tasks=["semseg"], augment_on="cpu")  # the warps run in the worker
    dm.setup("fit")
    monkeypatch.setattr(transforms.cv2, "warpAffine", refuse)
    with pytest.raises(DataError, match=rf"sample {fake.train[0]}: error: .*SHRT_MAX"):
        dm.datasets["train"][0]
