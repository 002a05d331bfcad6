"""BSDS/SEISM edge protocol: thinning, one-to-one matching within the tolerance, ODS and OIS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlora.metrics.edge_bsds import BSDSEdgeMetric, bsds_thresholds, image_counts, matched_pixels, ods_ois

H = W = 64
RADIUS = 0.0075 * math.hypot(H, W)  # 0.68 px: only exact hits match at this size


def square_outline() -> np.ndarray:
    """Four separate one-pixel-wide straight segments: already thin (thinning keeps every pixel)."""
    gt = np.zeros((H, W), dtype=np.uint8)
    gt[16, 10:30] = gt[47, 10:30] = gt[10:50, 40] = gt[10:50, 55] = 1
    return gt


def logits(prob: np.ndarray) -> torch.Tensor:
    p = torch.from_numpy(prob).float().clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))[None, None]


def test_threshold_grid_is_the_benchmarks():
    t = bsds_thresholds(99)
    assert len(t) == 99 and t[0] == pytest.approx(0.01) and t[-1] == pytest.approx(0.99)


def test_matching_is_one_to_one_within_the_radius():
    label = np.zeros((H, W), bool)
    label[10, 10] = True
    pred = np.zeros((H, W), bool)
    pred[10, 11] = pred[11, 10] = True  # two predictions next to one label pixel: one match
    assert matched_pixels(pred, label, 1.0) == 1
    assert matched_pixels(pred, label, 0.9) == 0  # 1 px away: outside a 0.9 px tolerance
    pred2 = np.zeros((H, W), bool)
    pred2[10, 13] = True
    assert matched_pixels(pred2, label, 3.0) == 1 and matched_pixels(pred2, label, 2.9) == 0


@pytest.mark.parametrize("seed", range(8))
def test_matching_size_equals_an_optimal_assignment(seed):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    pred, label = rng.random((24, 24)) < 0.2, rng.random((24, 24)) < 0.15
    within = cdist(np.argwhere(pred), np.argwhere(label)) <= 2.0
    rows, cols = linear_sum_assignment(within, maximize=True)
    assert matched_pixels(pred, label, 2.0) == within[rows, cols].sum()


def test_perfect_and_shifted_predictions():
    gt = square_outline()
    metric = BSDSEdgeMetric(max_dist=0.0075)
    metric.update(logits(gt * 0.9), torch.from_numpy(gt)[None, None])
    scores = metric.compute()
    assert scores["odsF_bsds"] == pytest.approx(100.0) and scores["oisF_bsds"] == pytest.approx(100.0)
    shifted = np.roll(gt, 2, axis=1)  # 2 px right: vertical sides miss at 0.68 px, match at 3 px
    far = image_counts(shifted * 0.9, gt, 0.0075, [0.5])[0]
    near = image_counts(shifted * 0.9, gt, 3.0 / math.hypot(H, W), [0.5])[0]
    assert near.tolist() == [far[1], far[1], far[3], far[3]]  # everything matches at 3 px
    assert far[0] < far[1]


def test_thick_predictions_are_thinned_before_matching():
    gt = square_outline()
    thick = np.maximum.reduce(
        [np.roll(np.roll(gt, a, 0), b, 1) * 0.9 for a in (-1, 0, 1) for b in (-1, 0, 1)]
    )
    counts = image_counts(thick, gt, 2.0 / math.hypot(H, W), [0.5])[0]
    # the 3-pixel band thins to about one pixel across, so precision stays high; without thinning
    # the band has ~3x the label's pixels and one-to-one matching would cap precision near 1/3
    assert counts[1] < 1.3 * gt.sum()
    assert counts[0] / counts[1] > 0.9 and counts[2] / counts[3] > 0.9


def test_ods_uses_one_threshold_ois_one_per_image():
    gt = square_outline()
    a = gt * 0.4  # image A: the label's edges at 0.4, nothing else
    b = gt * 0.9
    b[2, 2:60] = 0.6  # image B: a 58-pixel false edge at 0.6, far from the label
    counts = np.stack([image_counts(p, gt, 0.0075, bsds_thresholds()) for p in (a, b)])
    scores = ods_ois(counts)
    assert scores["oisF"] == pytest.approx(100.0)  # A at t <= 0.4, B at 0.6 < t <= 0.9
    # one threshold for both: t <= 0.4 keeps B's false edge (P = 2n / (2n + 58), R = 1);
    # 0.6 < t <= 0.9 loses A (P = 1, R = 1/2)
    n = int(gt.sum())
    p_low = 2 * n / (2 * n + 58)
    expected = max(2 * p_low / (p_low + 1), 2 * 0.5 / 1.5)
    assert scores["odsF"] == pytest.approx(100 * expected, abs=1e-6)


def test_ignored_pixels_are_left_out_and_empty_sets_score_nan():
    gt = square_outline().astype(np.int64)
    gt[:, :8] = 255
    prob = gt.clip(0, 1) * 0.9
    prob[:, :8] = 0.9  # predictions inside the ignored region do not count as false positives
    counts = image_counts(prob, gt, 0.0075, [0.5])[0]
    assert counts[1] == counts[0] == counts[2] == counts[3]
    assert np.isnan(ods_ois(np.zeros((0, 99, 4), np.int64))["odsF"])


def test_mtlora_test_with_exact_edge_eval_reports_bsds_scores(tmp_path):
    import json
    from pathlib import Path

    from mtlora.cli import run_cli

    config = Path(__file__).parent / "configs" / "tiny_synthetic.yaml"
    common = [
        "-c",
        str(config),
        "--data.init_args.tasks",
        "[semseg, edge]",
        "--data.init_args.test_size",
        "4",
    ]
    common += [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = run_cli(["test", *common, "--model.edge_eval", "exact"])
    results = json.loads((Path(cli.trainer.log_dir) / "test_results.json").read_text())
    flat = json.dumps(results)
    assert "test/edge/odsF_bsds" in flat and "test/edge/oisF_bsds" in flat and "test/edge/odsF" in flat
    assert "bsds" not in "".join(cli.model.evaluators["val"].metrics["edge"].keys())  # validation stays fast


def test_edge_eval_command_scores_saved_maps(tmp_path, capsys):
    import json

    from PIL import Image

    from mtlora.cli import run_cli

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    gt = square_outline()
    Image.fromarray(gt * 255).save(tmp_path / "gt" / "a.png")  # 8-bit label: non-zero = edge
    Image.fromarray((gt * 230).astype(np.uint8)).save(tmp_path / "pred" / "a.png")  # perfect
    np.save(tmp_path / "gt" / "b.npy", gt.astype(np.int64))
    np.save(tmp_path / "pred" / "b.npy", np.zeros(gt.shape))  # nothing predicted: recall 0
    run_cli(["edge_eval", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "gt")])
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 2
    assert scores["oisF"] == pytest.approx(100 * 2 * 0.5 / 1.5)  # P = 1, R = 1/2 over both images
    assert scores["odsF"] == pytest.approx(scores["oisF"])
    (tmp_path / "pred" / "c.png").write_bytes((tmp_path / "pred" / "a.png").read_bytes())
    with pytest.raises(SystemExit, match=r"no label for \['c'\]"):
        run_cli(["edge_eval", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "gt")])
