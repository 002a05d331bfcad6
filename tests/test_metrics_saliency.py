"""SaliencyMetric: per-image max-over-thresholds Jaccard (paper "mIoU") and data-set β²=0.3 maxF."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlora.metrics import SaliencyMetric
from mtlora.metrics.saliency import MAXF_THRESHOLDS, MIOU_THRESHOLDS


def numpy_saliency(probs: np.ndarray, labels: np.ndarray, beta_sq: float = 0.3) -> tuple[float, float]:
    """Plain loops. probs/labels (N, H, W); label 255 = void. Returns (mIoU %, maxF %)."""
    miou_thr = np.linspace(0.2, 0.9, 15).astype(np.float32)
    maxf_thr = (np.arange(1, 20) * 0.05).astype(np.float32)
    jaccards = []
    for prob, label in zip(probs, labels):
        valid = label != 255
        if not valid.any():
            continue
        gt = (label >= 0.5) & valid
        row = []
        for t in miou_thr:
            pred = (prob > t) & valid
            if gt.sum() == 0 and pred.sum() == 0:
                row.append(1.0)
            else:
                row.append((gt & pred).sum() / (gt | pred).sum())
        jaccards.append(row)
    miou = 100 * np.mean(np.array(jaccards), axis=0).max()
    valid = labels != 255
    gt = (labels >= 0.5) & valid
    best = 0.0
    for t in maxf_thr:
        pred = (probs > t) & valid
        tp, pp, ap = (pred & gt).sum(), pred.sum(), gt.sum()
        p = tp / pp if pp else 0.0
        r = tp / ap if ap else 0.0
        f = (1 + beta_sq) * p * r / (beta_sq * p + r) if p + r > 0 else 0.0
        best = max(best, f)
    return miou, 100 * best


def test_threshold_grids():
    np.testing.assert_allclose(MIOU_THRESHOLDS, np.linspace(0.2, 0.9, 15))
    np.testing.assert_allclose(MAXF_THRESHOLDS, np.linspace(0.05, 0.95, 19))


def test_hand_computed_example():
    # Image 1: label [1, 1, 0, 0], p [.9, .2, .8, .1] → pred@0.5 [1, 0, 1, 0]: J = 1/3.
    # Image 2: empty label, empty prediction → J = 1.   mIoU = (1/3 + 1) / 2.
    # Data set at 0.5: TP 1, predicted 2, actual 2 → P = R = 1/2 → F = 1/2.
    probs = torch.tensor([[0.9, 0.2, 0.8, 0.1], [0.1, 0.1, 0.1, 0.1]]).view(2, 1, 2, 2)
    labels = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]).view(2, 1, 2, 2)
    metric = SaliencyMetric(miou_thresholds=[0.5], maxf_thresholds=[0.5])
    metric.update(torch.logit(probs), labels)
    out = metric.compute()
    assert out["mIoU"].item() == pytest.approx(100 * (1 / 3 + 1) / 2, abs=1e-4)
    assert out["maxF"].item() == pytest.approx(50.0, abs=1e-4)


def test_matches_numpy_reference_with_void_and_single_image_batches():
    gen = torch.Generator().manual_seed(0)
    n, size = 6, 16
    logits = 2 * torch.randn(n, 1, size, size, generator=gen)
    labels = (torch.rand(n, 1, size, size, generator=gen) < 0.4).float()
    labels[torch.rand(n, 1, size, size, generator=gen) < 0.1] = 255
    labels[4] = 0  # no salient pixel
    logits[4] = -10  # and none predicted → Jaccard 1 at every threshold
    labels[5] = 255  # fully void image: not counted
    metric = SaliencyMetric()
    for lo, hi in ((0, 1), (1, 4), (4, 6)):  # includes a single-image batch
        metric.update(logits[lo:hi], labels[lo:hi])
    miou, maxf = numpy_saliency(torch.sigmoid(logits)[:, 0].numpy(), labels[:, 0].numpy())
    out = metric.compute()
    assert out["mIoU"].item() == pytest.approx(miou, abs=1e-4)
    assert out["maxF"].item() == pytest.approx(maxf, abs=1e-4)
    assert metric.num_images.item() == 5


def test_accumulation_equals_one_big_update_and_sample_mask():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 1, 8, 8, generator=gen)
    labels = (torch.rand(5, 1, 8, 8, generator=gen) < 0.5).float()
    split, whole, masked = SaliencyMetric(), SaliencyMetric(), SaliencyMetric()
    split.update(logits[:2], labels[:2])
    split.update(logits[2:], labels[2:])
    whole.update(logits, labels)
    masked.update(
        torch.cat([logits, logits[:1]]), torch.cat([labels, labels[:1]]), sample_mask=torch.arange(6) < 5
    )
    for other in (whole, masked):
        torch.testing.assert_close(split.jaccard_sum, other.jaccard_sum)
        assert torch.equal(split.true_pos, other.true_pos) and torch.equal(split.pred_pos, other.pred_pos)
        assert split.compute() == other.compute()


def test_all_void_is_nan_and_does_not_disturb_other_batches():
    logits = torch.randn(2, 1, 4, 4)
    void = torch.full((2, 1, 4, 4), 255.0)
    metric = SaliencyMetric()
    metric.update(logits, void)
    assert all(math.isnan(v.item()) for v in metric.compute().values())
    labels = (torch.rand(2, 1, 4, 4) < 0.5).float()
    metric.update(logits, labels)
    reference = SaliencyMetric()
    reference.update(logits, labels)
    assert metric.compute() == reference.compute()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="strictly increasing"):
        SaliencyMetric(miou_thresholds=[0.5, 0.4])
    with pytest.raises(ValueError, match="expected logits"):
        SaliencyMetric().update(torch.randn(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
