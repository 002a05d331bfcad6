"""DepthMetric (pixel-level RMSE) and EdgeMetric (loss and distance-tolerant ODS F) vs NumPy/SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mtlora.losses import balanced_bce_loss
from mtlora.metrics import DepthMetric, EdgeMetric
from mtlora.metrics.edge import disk_max

# ----------------------------------------------------------------------------------- depth


def test_depth_matches_numpy_pixel_level_rmse():
    gen = torch.Generator().manual_seed(0)
    pred = 4 * torch.rand(3, 1, 8, 8, generator=gen) - 0.2  # some non-positive predictions
    label = 5 * torch.rand(3, 1, 8, 8, generator=gen)
    label[torch.rand(3, 1, 8, 8, generator=gen) < 0.2] = 255
    label[0, 0, 0, :3] = 0.0  # labelled but zero: in the RMSE, not in the log-RMSE
    metric = DepthMetric()
    metric.update(pred[:1], label[:1])  # single-image batch
    metric.update(pred[1:], label[1:])
    p, g = pred.double().numpy(), label.double().numpy()
    valid = g != 255
    rmse = np.sqrt(np.mean((p[valid] - g[valid]) ** 2))
    log_valid = valid & (g > 0)
    log_rmse = np.sqrt(np.mean((np.log(np.maximum(p[log_valid], 1e-9)) - np.log(g[log_valid])) ** 2))
    out = metric.compute()
    assert out["rmse"].item() == pytest.approx(rmse, rel=1e-5)
    assert out["log_rmse"].item() == pytest.approx(log_rmse, rel=1e-5)


def test_depth_hand_example_empty_state_and_sample_mask():
    metric = DepthMetric()
    metric.update(torch.ones(1, 1, 1, 2), torch.full((1, 1, 1, 2), 255.0))
    assert all(math.isnan(v.item()) for v in metric.compute().values())
    # errors 1 and 3 → RMSE sqrt(5); second image masked out
    pred = torch.tensor([1.0, 2.0, 100.0, 100.0]).view(2, 1, 1, 2)
    label = torch.tensor([2.0, 5.0, 1.0, 1.0]).view(2, 1, 1, 2)
    metric.update(pred, label, sample_mask=torch.tensor([True, False]))
    assert metric.compute()["rmse"].item() == pytest.approx(math.sqrt(5.0), rel=1e-6)


# ------------------------------------------------------------------------------------ edge


def numpy_edge_counts(
    prob: np.ndarray, label: np.ndarray, thresholds: np.ndarray, radius: float
) -> np.ndarray:
    """Per-threshold (true pos, predicted, recalled label pixels, label pixels) via SciPy distance transforms."""
    counts = np.zeros((len(thresholds), 4), dtype=np.int64)
    for p, lab in zip(prob, label):  # (H, W) per image
        valid = lab != 255
        gt = (lab >= 0.5) & valid
        dist_to_gt = ndimage.distance_transform_edt(~gt) if gt.any() else np.full(gt.shape, np.inf)
        for i, t in enumerate(thresholds):
            pred = (p > t) & valid
            dist_to_pred = ndimage.distance_transform_edt(~pred) if pred.any() else np.full(gt.shape, np.inf)
            counts[i] += [
                (pred & (dist_to_gt <= radius)).sum(),
                pred.sum(),
                (gt & (dist_to_pred <= radius)).sum(),
                gt.sum(),
            ]
    return counts


def ods_from_counts(counts: np.ndarray) -> float:
    precision = counts[:, 0] / np.maximum(counts[:, 1], 1)
    recall = counts[:, 2] / np.maximum(counts[:, 3], 1)
    f = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return 100 * f.max()


def edge_batch(gen: torch.Generator, n: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.zeros(n, 1, size, size)
    label[:, :, size // 3, 2:-2] = 1  # a horizontal and a vertical edge per image
    label[:, :, 3:-3, size // 2] = 1
    shifted = torch.roll(label, shifts=(2, 1), dims=(2, 3))  # within the 2.5 px tolerance, off by 1-2 px
    noisy = 2 * shifted - 2 + 1.5 * torch.randn(n, 1, size, size, generator=gen)
    label[:, :, -2:, :] = 255  # a void strip
    return noisy, label


def test_disk_max_equals_scipy_grey_dilation_with_a_disk():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 13, 11, generator=gen)
    for radius in (1.0, 2.5, 3.3):
        reach = math.floor(radius)
        yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
        footprint = yy**2 + xx**2 <= radius**2
        for img in range(2):
            expected = ndimage.grey_dilation(
                x[img, 0].numpy(), footprint=footprint, mode="constant", cval=0.0
            )
            np.testing.assert_allclose(disk_max(x, radius)[img, 0].numpy(), expected)


def test_ods_matches_scipy_distance_transform_reference():
    gen = torch.Generator().manual_seed(1)
    logits, label = edge_batch(gen, 3)
    metric = EdgeMetric(max_dist=2.5 / math.hypot(24, 24), num_thresholds=9)
    metric.update(logits[:1], label[:1])  # single-image batch
    metric.update(logits[1:], label[1:])
    prob = torch.sigmoid(logits)[:, 0].numpy()
    counts = numpy_edge_counts(prob, label[:, 0].numpy(), metric.thresholds.numpy(), 2.5)
    ours = torch.stack([metric.true_pos, metric.pred_pos, metric.recalled, metric.actual_pos.expand(9)], 1)
    np.testing.assert_array_equal(ours.numpy(), counts)
    ods = metric.compute()["odsF"].item()
    assert ods == pytest.approx(ods_from_counts(counts), abs=1e-4)
    assert 20 < ods < 90  # a non-trivial operating point


def test_ods_tolerance_hand_examples():
    size = 32
    label = torch.zeros(1, 1, size, size)
    label[0, 0, 16, 4:28] = 1
    radius_px = 3.0
    max_dist = radius_px / math.hypot(size, size)
    for shift, expected in ((0, 100.0), (3, 100.0), (4, 0.0)):
        logits = torch.where(torch.roll(label, shift, dims=2) > 0, 5.0, -5.0)
        metric = EdgeMetric(max_dist=max_dist, num_thresholds=5)
        metric.update(logits, label)
        assert metric.compute()["odsF"].item() == pytest.approx(expected, abs=1e-4), shift
    # Half of the label edge predicted, nothing else: precision 1, recall ~1/2.
    logits = torch.full((1, 1, size, size), -5.0)
    logits[0, 0, 16, 4:16] = 5.0
    metric = EdgeMetric(max_dist=max_dist, num_thresholds=5)
    metric.update(logits, label)
    recall = 15 / 24  # 12 predicted + 3 label pixels within 3 px to the right of the last one
    assert metric.compute()["odsF"].item() == pytest.approx(100 * 2 * recall / (1 + recall), abs=1e-4)


def test_edge_loss_equals_balanced_bce_on_logits():
    gen = torch.Generator().manual_seed(2)
    logits, label = edge_batch(gen, 2, size=16)
    metric = EdgeMetric()
    metric.update(logits[:1], label[:1])
    metric.update(logits[1:], label[1:])
    # Equal labelled-pixel counts per image → data-set mean = mean of the per-image losses.
    expected = (
        balanced_bce_loss(logits[:1], label[:1], 0.95) + balanced_bce_loss(logits[1:], label[1:], 0.95)
    ) / 2
    assert metric.compute()["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_edge_accumulation_sample_mask_and_empty_state():
    gen = torch.Generator().manual_seed(3)
    logits, label = edge_batch(gen, 3, size=16)
    split, whole, masked = (
        EdgeMetric(num_thresholds=19),
        EdgeMetric(num_thresholds=19),
        EdgeMetric(num_thresholds=19),
    )
    split.update(logits[:2], label[:2])
    split.update(logits[2:], label[2:])
    whole.update(logits, label)
    masked.update(
        torch.cat([logits, logits[:1]]), torch.cat([label, label[:1]]), sample_mask=torch.arange(4) < 3
    )
    for other in (whole, masked):
        for name in ("true_pos", "pred_pos", "recalled", "actual_pos", "count"):
            assert torch.equal(getattr(split, name), getattr(other, name)), name
        torch.testing.assert_close(split.compute(), other.compute())
    empty = EdgeMetric()
    empty.update(logits, torch.full_like(label, 255))
    assert all(math.isnan(v.item()) for v in empty.compute().values())
