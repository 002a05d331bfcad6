"""Device-side augmentation: same parameters and same result as the CPU path, clean labels, borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlora.data import NYUDDataModule, PascalContextDataModule
from mtlora.data.device_augment import AUGMENT_KEY, DeviceAugment, DevicePrep, collate_padded
from mtlora.data.transforms import MultiTaskTransform

try:
    from fixtures_data import write_fake_nyud, write_fake_pascal
except ImportError:  # tests/ imported as a package
    from tests.fixtures_data import write_fake_nyud, write_fake_pascal

TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    fake = write_fake_pascal(tmp_path_factory.mktemp("p") / "PASCAL_MT", n_train=3, size=(90, 120))
    dm = PascalContextDataModule(str(fake.root), tasks=TASKS, num_workers=0, img_size=64)
    reader = dm.make_reader("train")
    return dm, [reader(sample_id) for sample_id in fake.train]


def device_output(dm, sample, seed):
    prep = dm.build_transform(train=True)
    prep.set_random_seed(seed)
    return dm.on_after_batch_transfer(collate_padded([prep(sample)]), 0)


def cpu_output(dm, sample, seed):
    transform = MultiTaskTransform(dm.tasks, dm.img_size, augment=True, seed=seed, **dm.transform_options)
    return transform(sample)


def test_device_path_matches_cpu_path_for_the_same_seed(pascal):
    dm, samples = pascal
    flips = set()
    for seed in range(8):
        sample = samples[seed % len(samples)]
        prep = dm.build_transform(train=True)
        prep.set_random_seed(seed)
        flips.add(bool(prep(sample)[AUGMENT_KEY][0]))
        cpu, dev = cpu_output(dm, sample, seed), device_output(dm, sample, seed)
        image_diff = (cpu["image"] - dev["image"][0]).abs()
        assert image_diff.mean() < 0.06, seed  # normalised units: ~3 grey levels
        for task in ("semseg", "human_parts", "sal", "edge"):
            assert dev[task][0].shape == cpu[task].shape and dev[task].dtype == cpu[task].dtype
            agree = (dev[task][0] == cpu[task]).float().mean()
            assert agree > 0.93, (seed, task, float(agree))  # nearest: two resamplings vs one
        valid_cpu, valid_dev = cpu["normals"][0] != 255, dev["normals"][0, 0] != 255
        assert (valid_cpu == valid_dev).float().mean() > 0.98
        both = valid_cpu & valid_dev
        cosine = (cpu["normals"] * dev["normals"][0]).sum(0)[both]
        assert cosine.mean() > 0.995, seed
    assert flips == {False, True}  # both branches compared


def test_normals_direction_after_flip_and_rotation():
    normal = np.array([0.6, 0.0, 0.8], dtype=np.float32)
    sample = {"image": np.zeros((40, 40, 3), np.uint8), "normals": np.tile(normal, (40, 40, 1))}
    augment = DeviceAugment(["normals"], img_size=40)
    prep = DevicePrep(["normals"])
    raw = prep(sample)
    angle = 30.0
    raw[AUGMENT_KEY] = torch.tensor([1.0, angle, 1.0, 40, 40], dtype=torch.float64)
    out = augment(collate_padded([raw]))["normals"][0, :, 20, 20]
    # flip negates x, then the OpenCV rotation (counter-clockwise on screen, y pointing down)
    cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    nx, ny = -0.6, 0.0
    expected = torch.tensor([cos * nx + sin * ny, -sin * nx + cos * ny, 0.8], dtype=torch.float32)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)  # float16 transfer


def test_parameter_statistics_match_the_recipes():
    prep = DevicePrep(["semseg"], rotation=20.0, scale_range=(0.75, 1.25))
    draws = []
    for seed in range(3000):
        prep.set_random_seed(seed)
        draws.append(prep.draw())
    flips, angles, scales = (np.array(column, dtype=float) for column in zip(*draws))
    assert abs(flips.mean() - 0.5) < 0.03
    assert -20 <= angles.min() < -19 and 19 < angles.max() <= 20 and abs(angles.mean()) < 0.6
    assert 0.75 <= scales.min() < 0.76 and 1.24 < scales.max() <= 1.25 and abs(scales.mean() - 1.0) < 0.01
    nyud = DevicePrep(["depth"], rotation=0.0, scale_range=(1.0, 1.0), scale_choices=(1.0, 1.2, 1.5))
    nyud_draws = []
    for seed in range(600):
        nyud.set_random_seed(seed)
        nyud_draws.append(nyud.draw())
    assert {angle for _, angle, _ in nyud_draws} == {0.0}
    counts = {s: sum(1 for _, _, scale in nyud_draws if scale == s) for s in (1.0, 1.2, 1.5)}
    assert sum(counts.values()) == 600 and min(counts.values()) > 150
    no_aug = DevicePrep(["semseg"], augment=False)
    assert all(no_aug.draw() == (False, 0.0, 1.0) for _ in range(5))


@pytest.mark.parametrize("border_label,fill", [("ignore", 255), ("official", 0)])
def test_labels_stay_labels_and_borders_follow_border_label(pascal, border_label, fill):
    dm, samples = pascal
    dm = PascalContextDataModule(
        str(dm.root), tasks=TASKS, num_workers=0, img_size=64, border_label=border_label
    )
    prep = dm.build_transform(train=True)
    raws = [prep(sample) for sample in samples]
    for raw in raws:  # zoomed out and rotated: every corner comes from outside the image
        raw[AUGMENT_KEY][:3] = torch.tensor([0.0, 20.0, 0.75], dtype=torch.float64)
    batch = dm.on_after_batch_transfer(collate_padded(raws), 0)
    allowed = {"semseg": set(range(21)), "human_parts": set(range(7)), "sal": {0, 1}, "edge": {0, 1}}
    for task, values in allowed.items():
        labels = batch[task]
        assert torch.equal(labels, labels.round())
        assert set(torch.unique(labels).tolist()) <= values | {255}
        for sample_labels in labels:
            if task == "human_parts" and not ((sample_labels >= 1) & (sample_labels <= 6)).any():
                assert sample_labels.eq(255).all()  # no person parts: the whole map is ignored
                continue
            assert sample_labels[..., 0, 0].eq(fill).all() and sample_labels[..., -1, -1].eq(fill).all(), task
    assert batch["normals"][:, :, 0, 0].eq(255).all()  # normals are ignored at borders in both modes


def test_nyud_depth_is_divided_by_the_zoom_and_padding_does_not_leak(tmp_path):
    fake = write_fake_nyud(tmp_path / "N", size=(30, 40))
    dm = NYUDDataModule(str(fake.root), num_workers=0, img_size=32, flip=False)
    reader, prep = dm.make_reader("train"), dm.build_transform(train=True)
    small = {key: value[:20, :28] for key, value in reader(fake.train[0]).items()}
    raws = [prep(small), prep(reader(fake.train[1]))]
    for raw in raws:
        raw[AUGMENT_KEY][:3] = torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64)
    batch = dm.on_after_batch_transfer(collate_padded([dict(r) for r in raws]), 0)
    alone = dm.on_after_batch_transfer(collate_padded([dict(raws[0])]), 0)
    for task in ("image", "semseg", "depth", "normals", "edge"):
        torch.testing.assert_close(batch[task][0], alone[task][0])  # the padded sample is unaffected
    depth = batch["depth"][1, 0]
    source = torch.from_numpy(reader(fake.train[1])["depth"])
    valid = depth != 255
    assert valid.any()
    assert (
        depth[valid].max() <= source.max() / 1.5 + 1e-6
        and depth[valid].min() >= source[source > 0].min() / 1.5 - 1e-6
    )


def test_device_and_cpu_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match="augment_on"):
        PascalContextDataModule(str(tmp_path), augment_on="gpu")
    with pytest.raises(ValueError, match="border_label"):
        DeviceAugment(["semseg"], 32, border_label="zero")
    with pytest.raises(ValueError, match="rotation"):
        DevicePrep(["semseg"], rotation=-1)


def test_device_batches_do_not_depend_on_resuming_or_worker_count(tmp_path):
    fake = write_fake_pascal(tmp_path / "P", n_train=6, n_val=1)

    def datamodule(num_workers=0):
        dm = PascalContextDataModule(
            str(fake.root),
            tasks=TASKS,
            num_workers=num_workers,
            img_size=32,
            batch_size=2,
            persistent_workers=False,
        )
        dm.setup("fit")
        return dm

    dm = datamodule()
    full = [dm.on_after_batch_transfer(batch, 0) for batch in dm.train_dataloader()]
    resumed_dm = datamodule()
    resumed_dm.load_state_dict({"train_loader": {"epoch": 0, "batches": 1}})
    rest = [resumed_dm.on_after_batch_transfer(batch, 0) for batch in resumed_dm.train_dataloader()]
    assert len(rest) == len(full) - 1 == 2
    for expected, got in zip(full[1:], rest):
        assert expected["meta"] == got["meta"]
        for key in ["image", *TASKS]:
            assert torch.equal(expected[key], got[key]), key

    with_workers = [batch for batch in datamodule(num_workers=2).train_dataloader()]
    for expected, got in zip(full, with_workers):  # the worker count changes nothing
        got = datamodule().on_after_batch_transfer(got, 0)
        assert expected["meta"] == got["meta"]
        for key in ["image", *TASKS]:
            assert torch.equal(expected[key], got[key]), key
