"""SegmentationMetric against a NumPy re-implementation of the official per-class TP/FP/FN meter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from mtlora.metrics import SegmentationMetric


def numpy_semseg(
    preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int
) -> tuple[np.ndarray, float]:
    """Official meter: TP/FP/FN per class over all images, label 255 excluded; returns (IoU %, pixel acc %)."""
    tp, fp, fn = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    correct = total = 0
    for pred, gt in zip(preds, labels):
        valid = gt != 255
        for c in range(num_classes):
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
            fp[c] += np.sum((gt != c) & (pred == c) & valid)
            fn[c] += np.sum((gt == c) & (pred != c) & valid)
        correct += np.sum((pred == gt) & valid)
        total += np.sum(valid)
    return 100 * tp / np.maximum(tp + fp + fn, 1e-8), 100 * correct / total


def random_batch(gen: torch.Generator, b: int, c: int, size: int = 12, ignore: float = 0.2):
    logits = torch.randn(b, c, size, size, generator=gen)
    target = torch.randint(0, c, (b, size, size), generator=gen)
    target[torch.rand(b, size, size, generator=gen) < ignore] = 255
    return logits, target


def test_matches_numpy_reference_over_batches():
    gen = torch.Generator().manual_seed(0)
    metric = SegmentationMetric(5)
    preds, labels = [], []
    for b in (3, 1, 2):  # includes a single-image batch (the official squeeze bug)
        logits, target = random_batch(gen, b, 5)
        metric.update(logits, target)
        preds += list(logits.argmax(1).numpy())
        labels += list(target.numpy())
    iou, acc = numpy_semseg(preds, labels, 5)
    out = metric.compute()
    assert out["mIoU"].item() == pytest.approx(iou.mean(), abs=1e-4)
    assert out["pixel_acc"].item() == pytest.approx(acc, abs=1e-4)
    np.testing.assert_allclose(metric.per_class_iou().numpy(), iou, atol=1e-4)


def test_absent_class_counts_as_zero_unlike_torchmetrics_macro():
    # 4 classes; only 0 and 1 occur. IoU_0 = 1/2, IoU_1 = 2/3, IoU_2 = IoU_3 = 0 → mIoU = 29.17 %.
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    metric = SegmentationMetric(4)
    metric.update(logits, target)
    assert metric.compute()["mIoU"].item() == pytest.approx(100 * (1 / 2 + 2 / 3) / 4, abs=1e-4)
    assert metric.compute()["pixel_acc"].item() == pytest.approx(75.0)
    torchmetrics_macro = MulticlassJaccardIndex(4, average="macro")(pred, target).item()
    assert torchmetrics_macro == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-4)  # drops absent classes


def test_accumulation_equals_one_big_update():
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(gen, b, 7) for b in (2, 1, 3)]
    split, whole = SegmentationMetric(7), SegmentationMetric(7)
    for logits, target in batches:
        split.update(logits, target)
    whole.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert torch.equal(split.confmat, whole.confmat)
    assert split.compute() == whole.compute()


def test_all_ignored_batch_adds_nothing_and_empty_state_is_nan():
    gen = torch.Generator().manual_seed(2)
    logits, target = random_batch(gen, 2, 3)
    ignored = torch.full_like(target, 255)
    only_ignored = SegmentationMetric(3)
    only_ignored.update(logits, ignored)
    out = only_ignored.compute()
    assert math.isnan(out["mIoU"].item()) and math.isnan(out["pixel_acc"].item())

    mixed, plain = SegmentationMetric(3), SegmentationMetric(3)
    mixed.update(logits, ignored)
    mixed.update(logits, target)
    plain.update(logits, target)
    assert mixed.compute() == plain.compute()
    assert not math.isnan(mixed.compute()["mIoU"].item())


def test_out_of_range_labels_channel_dim_and_sample_mask():
    gen = torch.Generator().manual_seed(3)
    logits, target = random_batch(gen, 3, 4, ignore=0.0)
    with_junk = target.clone()
    with_junk[0, 0, :] = 9  # not a class: ignored like 255
    clean = target.clone()
    clean[0, 0, :] = 255
    a, b = SegmentationMetric(4), SegmentationMetric(4)
    a.update(logits, with_junk.unsqueeze(1))  # (B, 1, H, W) labels are accepted
    b.update(logits, clean)
    assert torch.equal(a.confmat, b.confmat)

    masked, subset = SegmentationMetric(4), SegmentationMetric(4)
    masked.update(logits, target, sample_mask=torch.tensor([True, False, True]))
    subset.update(logits[[0, 2]], target[[0, 2]])
    assert torch.equal(masked.confmat, subset.confmat)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected logits"):
        SegmentationMetric(4).update(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetric(0)
