"""check_data_folder: counts per split and task, missing / unreadable / mis-sized files."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from mtlora.data import (
    NYUDDataModule,
    PascalContextDataModule,
    SyntheticDataModule,
    check_data_folder,
    format_report,
)

try:
    from fixtures_data import write_fake_nyud, write_fake_pascal
except ImportError:  # tests/ imported as a package
    from tests.fixtures_data import write_fake_nyud, write_fake_pascal


def test_clean_pascal_folder_passes(tmp_path):
    fake = write_fake_pascal(tmp_path / "P", n_train=2, n_val=1)
    report = check_data_folder(fake.root)  # a root: every PASCAL task is checked
    assert report.ok and report.dataset == "PascalContextDataModule"
    assert report.splits["train"].complete == {
        "semseg": 2,
        "human_parts": 2,
        "sal": 2,
        "normals": 2,
        "edge": 2,
    }
    assert "OK: no problems found" in format_report(report)


def test_problems_are_all_listed_without_stopping(tmp_path):
    fake = write_fake_pascal(tmp_path / "P", n_train=3, n_val=2)
    a, b, c = fake.train
    (fake.root / "sal_distill" / f"{a}.png").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(fake.root / "semseg" / "pascal-context" / f"{b}.png")
    (fake.root / "normals_distill" / f"{c}.png").write_bytes(b"not a png")
    (fake.root / "pascal-context" / "trainval" / f"{c}.mat").unlink()
    (fake.root / "JPEGImages" / f"{fake.val[0]}.jpg").unlink()
    dm = PascalContextDataModule(str(fake.root), tasks=["semseg", "sal", "normals", "edge"], num_workers=0)

    report = check_data_folder(dm)
    found = {(p.split, p.sample_id, p.kind, p.problem) for p in report.problems}
    assert found == {
        ("train", a, "sal", "missing"),
        ("train", b, "semseg", "mis-sized"),
        ("train", c, "normals", "unreadable"),
        ("train", c, "label_map", "missing"),
        ("val", fake.val[0], "image", "missing"),
    }
    assert not report.ok
    assert report.splits["train"].complete == {"semseg": 2, "sal": 2, "normals": 2, "edge": 2}
    assert report.splits["val"].complete == {"semseg": 1, "sal": 1, "normals": 1, "edge": 1}
    text = format_report(report)
    assert str(fake.root / "sal_distill" / f"{a}.png") in text
    assert "mis-sized" in text and "4x4 differs" in text and "FAILED: 5 problem(s)" in text
    json.dumps(report.to_dict())  # serialisable for a --json output


def test_missing_split_file_and_nyud_root(tmp_path):
    fake = write_fake_nyud(tmp_path / "N", layout="NYUDv2")
    (fake.root / "gt_sets" / "val.txt").unlink()
    (fake.root / "edge" / f"{fake.train[1]}.png").unlink()
    report = check_data_folder(str(fake.root), max_samples=2)
    assert report.dataset == "NYUDDataModule"
    assert report.splits["val"].error is not None and "val.txt" in report.splits["val"].error
    assert report.splits["train"].checked == 2 and report.splits["train"].samples == 3
    assert report.splits["train"].complete == {"semseg": 2, "depth": 2, "normals": 2, "edge": 1}
    assert "cannot list samples" in format_report(report)
    assert check_data_folder(
        NYUDDataModule(str(fake.root), tasks=["depth"], num_workers=0), splits=["train"]
    ).ok


def test_synthetic_data_has_nothing_to_check():
    report = check_data_folder(SyntheticDataModule(train_size=2, val_size=1, test_size=1))
    assert report.ok and report.splits["train"].samples == 2
