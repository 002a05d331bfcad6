"""Synthetic data set: determinism, task consistency, batch convention, worker seeding, DDP samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlora.data.datamodule as datamodule_module
from mtlora.data import SyntheticDataModule
from mtlora.data.dataset import MultiTaskDataset
from mtlora.data.synthetic import SyntheticScenes
from mtlora.tasks import IGNORE_INDEX

ALL_TASKS = ["semseg", "human_parts", "sal", "normals", "edge", "depth"]


def test_same_index_same_scene_and_seeds_or_splits_differ():
    a = SyntheticScenes(0, "train", 32, 21, 15).render(7)
    b = SyntheticScenes(0, "train", 32, 21, 15).render(7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other_seed = SyntheticScenes(1, "train", 32, 21, 15).render(7)
    other_split = SyntheticScenes(0, "val", 32, 21, 15).render(7)
    assert not np.array_equal(a["image"], other_seed["image"])
    assert not np.array_equal(a["image"], other_split["image"])


@pytest.mark.parametrize("index", range(12))
def test_tasks_are_consistent_with_each_other(index):
    scene = SyntheticScenes(3, "train", 48, 21, 15).render(index)
    semseg, parts = scene["semseg"], scene["human_parts"]
    np.testing.assert_array_equal(scene["sal"], (semseg != 0).astype(np.uint8))
    person = semseg == 15
    if person.any():
        assert set(np.unique(parts[person])) <= set(range(1, 7))
        assert np.all(parts[~person] == 0)
    else:
        assert np.all(parts == IGNORE_INDEX)  # like PASCAL images without annotated persons
    boundary = np.zeros_like(semseg, dtype=bool)
    boundary[:, :-1] |= semseg[:, 1:] != semseg[:, :-1]
    boundary[:-1, :] |= semseg[1:, :] != semseg[:-1, :]
    np.testing.assert_array_equal(scene["edge"].astype(bool), boundary)
    np.testing.assert_allclose(np.linalg.norm(scene["normals"], axis=-1), 1.0, atol=1e-5)
    assert np.all(scene["normals"][..., 2] > 0)  # every visible surface faces the camera
    assert np.all(scene["depth"] > 0)
    if (semseg != 0).any() and (semseg == 0).any():  # objects stand in front of the background plane
        assert scene["depth"][semseg != 0].max() < scene["depth"][semseg == 0].min()
    assert scene["image"].dtype == np.uint8 and scene["image"].shape == (48, 48, 3)


def test_scene_statistics_cover_every_task():
    scenes = [SyntheticScenes(0, "train", 32, 21, 15).render(i) for i in range(40)]
    with_person = sum(bool((s["human_parts"] != IGNORE_INDEX).any()) for s in scenes)
    assert 8 <= with_person <= 36
    classes = set().union(*(np.unique(s["semseg"]).tolist() for s in scenes))
    assert len(classes) >= 12
    assert np.mean([s["edge"].mean() for s in scenes]) > 0.01


def test_batches_follow_the_task_convention():
    dm = SyntheticDataModule(train_size=8, val_size=3, batch_size=4, img_size=32)
    assert dm.tasks == ALL_TASKS
    assert list(dm.task_channels.items()) == [
        ("semseg", 21),
        ("human_parts", 7),
        ("sal", 1),
        ("normals", 3),
        ("edge", 1),
        ("depth", 1),
    ]
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 2
    batch = train[0]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    for task in ("semseg", "human_parts"):
        assert batch[task].shape == (4, 32, 32) and batch[task].dtype == torch.int64
    for task, channels in (("sal", 1), ("normals", 3), ("edge", 1), ("depth", 1)):
        assert batch[task].shape == (4, channels, 32, 32) and batch[task].dtype == torch.float32
    assert batch["meta"]["size"] == [(32, 32)] * 4 and len(batch["meta"]["id"]) == 4
    val = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [3]  # no drop_last outside training
    assert val[0]["meta"]["id"] == ["val-000000", "val-000001", "val-000002"]


def test_task_subset_and_448_pixels():
    dm = SyntheticDataModule(tasks=["sal", "depth"], train_size=1, val_size=1, img_size=448, batch_size=1)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "sal", "depth", "meta"}
    assert batch["image"].shape == (1, 3, 448, 448) and batch["depth"].shape == (1, 1, 448, 448)
    assert dm.task_channels == {"sal": 1, "depth": 1}


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        SyntheticDataModule(tasks=["semseg", "colour"])
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDataModule(num_classes=1)


def test_rendered_colours_separate_the_classes():
    """The signal is clean: the nearest class colour already labels most object pixels."""
    renderer = SyntheticScenes(0, "val", 32, 21, 15)
    correct = total = 0
    for index in range(20):
        scene = renderer.render(index)
        objects = (scene["semseg"] != 0) & (scene["semseg"] != 15)
        pixels = scene["image"][objects].astype(np.float32)
        chroma = pixels / np.maximum(pixels.sum(axis=1, keepdims=True), 1)
        palette = renderer.palette / renderer.palette.sum(axis=1, keepdims=True)
        guess = np.argmin(((chroma[:, None] - palette[None]) ** 2).sum(-1), axis=1)
        correct += int((guess == scene["semseg"][objects]).sum())
        total += int(objects.sum())
    assert correct / total > 0.5  # chance is 1/20


def constant_scene_loader(seed: int, num_workers: int = 2) -> list[torch.Tensor]:
    """Images of 6 augmented copies of ONE scene, loaded by the DataModule's train loader."""
    dm = SyntheticDataModule(
        train_size=6,
        img_size=24,
        batch_size=1,
        num_workers=num_workers,
        augment=True,
        seed=seed,
        persistent_workers=False,
    )
    dm.datasets["train"] = MultiTaskDataset(
        ["train-000000"] * 6,
        SyntheticScenes(0, "train", 24, 21, 15),
        dm.build_transform(train=True),
        name="same",
    )
    return [batch["image"][0] for batch in dm.train_dataloader()]


def test_workers_get_distinct_reproducible_augmentation_streams():
    first = constant_scene_loader(seed=0)
    # batches alternate between the two workers: 0 and 1 are the first sample of each worker
    assert not torch.equal(first[0], first[1])
    again = constant_scene_loader(seed=0)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    other = constant_scene_loader(seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


def test_distributed_eval_uses_unrepeated_sampler_and_rank_seeds(monkeypatch):
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(datamodule_module, "distributed_rank_world", lambda rank=rank: (rank, 2))
        dm = SyntheticDataModule(train_size=4, val_size=5, img_size=16, batch_size=2, num_workers=1)
        dm.setup("fit")
        val = dm.val_dataloader()
        assert isinstance(val.sampler, UnrepeatedDistributedSampler)
        seen[rank] = list(val.sampler)
        assert dm.train_dataloader().worker_init_fn.keywords["rank"] == rank
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3, 4]  # every sample once, no padding duplicates
