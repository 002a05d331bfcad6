"""The official losses on hand-made tensors; all-ignored batches give 0, never NaN."""

import math

import pytest
import torch

from mtlora.losses import MultiTaskLoss, balanced_bce_loss, depth_loss, normals_loss, segmentation_loss


def test_segmentation_loss_ignores_255_and_is_zero_when_all_ignored():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    empty = segmentation_loss(logits, torch.full((1, 1, 2), 255))
    assert empty.item() == 0.0 and not torch.isnan(empty)


def test_balanced_bce_saliency_weights_by_batch_negatives():
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    w = 3 / 4  # fraction of negatives
    pos = -math.log(1 / (1 + math.exp(-0.0)))
    negs = sum(-math.log(1 - 1 / (1 + math.exp(-v))) for v in (1.0, -1.0, 2.0))
    expected = (w * pos + (1 - w) * negs) / 4
    assert balanced_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    edge = balanced_bce_loss(logits, target, pos_weight=0.95)
    assert edge.item() == pytest.approx((0.95 * pos + 0.05 * negs) / 4, rel=1e-6)


def test_normals_loss_normalises_prediction_and_masks_elements():
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([3.0, 0.0, 4.0])
    pred[0, :, 0, 1] = torch.tensor([1.0, 1.0, 1.0])
    target = torch.zeros(1, 3, 1, 2)
    target[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    target[0, :, 0, 1] = 255.0
    expected = (abs(0.6 - 0) + 0 + abs(0.8 - 1)) / 3
    assert normals_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert normals_loss(pred, torch.full_like(target, 255.0)).item() == 0.0


def test_depth_loss_l1_over_valid():
    pred = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.5, 255.0, 2.0]).view(1, 1, 1, 3)
    assert depth_loss(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)


def test_multitask_loss_weights_and_unknown_weight_names():
    crit = MultiTaskLoss(["semseg", "normals"], {"normals": 3.0})
    assert crit.weights == {"semseg": 1.0, "normals": 3.0}
    assert MultiTaskLoss(["sal", "edge", "human_parts", "depth"]).weights == {
        "sal": 5.0,
        "edge": 50.0,
        "human_parts": 2.0,
        "depth": 1.0,
    }
    with pytest.raises(ValueError, match="not trained"):
        MultiTaskLoss(["semseg"], {"sal": 1.0})


def test_loss_sums_give_the_data_set_loss_whatever_the_batching():
    """Validation losses: sums and counts over batches equal one batch of everything, per task."""
    gen = torch.Generator().manual_seed(0)
    tasks = ["semseg", "sal", "edge", "normals", "depth"]
    outputs = {
        "semseg": torch.randn(5, 4, 6, 6, generator=gen),
        "sal": torch.randn(5, 1, 6, 6, generator=gen),
        "edge": torch.randn(5, 1, 6, 6, generator=gen),
        "normals": torch.randn(5, 3, 6, 6, generator=gen),
        "depth": torch.rand(5, 1, 6, 6, generator=gen),
    }
    semseg = torch.randint(0, 4, (5, 6, 6), generator=gen)
    semseg[0] = 255  # an image without labels
    semseg[1, :3] = 255
    batch = {
        "semseg": semseg,
        "sal": (torch.rand(5, 1, 6, 6, generator=gen) < torch.linspace(0.1, 0.9, 5).view(5, 1, 1, 1)).float(),
        "edge": (torch.rand(5, 1, 6, 6, generator=gen) < 0.2).float(),
        "normals": torch.nn.functional.normalize(torch.randn(5, 3, 6, 6, generator=gen), dim=1),
        "depth": torch.rand(5, 1, 6, 6, generator=gen),
    }
    crit = MultiTaskLoss(tasks)

    def accumulate(groups):
        totals = dict.fromkeys(tasks, 0.0)
        counts = dict.fromkeys(tasks, 0.0)
        for index in groups:
            sums = crit.sums(
                {k: v[index] for k, v in outputs.items()}, {k: v[index] for k, v in batch.items()}
            )
            for t in tasks:
                totals[t] += sums[t][0].item()
                counts[t] += sums[t][1].item()
        return {t: totals[t] / counts[t] for t in tasks}

    whole = accumulate([[0, 1, 2, 3, 4]])
    split = accumulate([[0, 3], [1], [4, 2]])
    assert split == pytest.approx(whole, rel=1e-6)
    # fixed-weight losses are the batch loss of one batch of everything; saliency weights each image
    full = crit(outputs, batch)
    for t in ("semseg", "edge", "normals", "depth"):
        assert whole[t] == pytest.approx(full[t].item(), rel=1e-6)
    assert whole["sal"] != pytest.approx(full["sal"].item(), rel=1e-3)
