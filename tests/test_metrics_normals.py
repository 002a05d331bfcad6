"""NormalsMetric against float64 NumPy arccos angles; exact threshold counts; histogram median."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlora.metrics import NormalsMetric


def numpy_angles(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Angles (degrees, float64) of the valid pixels; arrays (N, 3, H, W), label 255 = invalid."""
    pred = pred.astype(np.float64)
    label = label.astype(np.float64)
    valid = np.all(label != 255, axis=1)
    p = pred / (np.linalg.norm(pred, axis=1, keepdims=True) + 1e-12)
    g = label / np.linalg.norm(np.where(valid[:, None], label, 1.0), axis=1, keepdims=True)
    cos = np.clip(np.sum(p * g, axis=1), -1, 1)
    return np.degrees(np.arccos(cos))[valid]


def tilted(degrees: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1×N image whose pixel i has angle degrees[i] between prediction and the label (0, 0, 1)."""
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    pred = torch.stack([rad.sin(), torch.zeros_like(rad), rad.cos()]).float().view(1, 3, 1, -1)
    label = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(pred).clone()
    return pred, label


def random_normals(gen: torch.Generator, n: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.nn.functional.normalize(torch.randn(n, 3, size, size, generator=gen), dim=1)
    pred = 3 * (label + 0.6 * torch.randn(n, 3, size, size, generator=gen))  # not unit length
    invalid = torch.rand(n, 1, size, size, generator=gen) < 0.15
    return pred, torch.where(invalid, torch.full_like(label, 255), label)


def test_matches_numpy_reference():
    gen = torch.Generator().manual_seed(0)
    pred, label = random_normals(gen, 5)
    metric = NormalsMetric()
    metric.update(pred[:1], label[:1])  # single-image batch
    metric.update(pred[1:], label[1:])
    angles = numpy_angles(pred.numpy(), label.numpy())
    out = metric.compute()
    assert out["mean"].item() == pytest.approx(angles.mean(), abs=1e-3)
    assert out["rmse"].item() == pytest.approx(np.sqrt(np.mean(angles**2)), abs=1e-3)
    assert out["median"].item() == pytest.approx(np.median(angles), abs=0.01)
    # No angle sits within 1e-3° of a threshold, so float32 vs float64 cannot flip a count.
    for limit in (11.25, 22.5, 30):
        assert np.abs(angles - limit).min() > 1e-3
        assert out[f"within_{limit:g}"].item() == pytest.approx(100 * np.mean(angles < limit), abs=1e-4)


def test_thresholds_are_exact_and_rmse_is_not_mean():
    pred, label = tilted([11.24, 11.26, 22.49, 22.51, 29.99, 30.01])
    metric = NormalsMetric()
    metric.update(pred, label)
    out = metric.compute()
    assert out["within_11.25"].item() == pytest.approx(100 / 6, abs=1e-4)
    assert out["within_22.5"].item() == pytest.approx(300 / 6, abs=1e-4)
    assert out["within_30"].item() == pytest.approx(500 / 6, abs=1e-4)

    pred, label = tilted([10.0, 30.0])
    metric = NormalsMetric()
    metric.update(pred, label)
    out = metric.compute()
    assert out["mean"].item() == pytest.approx(20.0, abs=1e-3)
    assert out["rmse"].item() == pytest.approx(math.sqrt(500.0), abs=1e-3)  # true RMSE, 22.36
    assert out["median"].item() == pytest.approx(20.0, abs=0.01)  # average of the middle pair


def test_small_angles_keep_precision_and_zero_prediction_is_90_degrees():
    pred, label = tilted([0.01, 0.02])
    metric = NormalsMetric()
    metric.update(pred, label)
    assert metric.compute()["mean"].item() == pytest.approx(0.015, abs=2e-4)
    metric = NormalsMetric()
    metric.update(torch.zeros(1, 3, 1, 2), label)
    assert metric.compute()["mean"].item() == pytest.approx(90.0, abs=1e-4)


def test_accumulation_invariance_and_sample_mask():
    gen = torch.Generator().manual_seed(1)
    pred, label = random_normals(gen, 4)
    split, whole, masked = NormalsMetric(), NormalsMetric(), NormalsMetric()
    split.update(pred[:3], label[:3])
    split.update(pred[3:], label[3:])
    whole.update(pred, label)
    masked.update(torch.cat([pred, pred[:2]]), torch.cat([label, label[:2]]), sample_mask=torch.arange(6) < 4)
    for other in (whole, masked):
        assert torch.equal(split.hist, other.hist) and torch.equal(split.within, other.within)
        torch.testing.assert_close(split.compute(), other.compute())


def test_empty_state_is_nan_and_all_invalid_batch_adds_nothing():
    gen = torch.Generator().manual_seed(2)
    pred, label = random_normals(gen, 2)
    metric = NormalsMetric()
    metric.update(pred, torch.full_like(label, 255))
    assert all(math.isnan(v.item()) for v in metric.compute().values())
    metric.update(pred, label)
    reference = NormalsMetric()
    reference.update(pred, label)
    torch.testing.assert_close(metric.compute(), reference.compute())


def test_shape_check():
    with pytest.raises(ValueError, match="expected logits"):
        NormalsMetric().update(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))
