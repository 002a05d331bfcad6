"""Edge detection scored by the BSDS / SEISM boundary protocol, the one MTL papers report.

The live ``odsF`` of :mod:`mtlora.metrics.edge` is a fast approximation (no thinning, no one-to-one
matching) for monitoring.  This module follows the benchmark protocol of the multi-task
literature (ASTMT / MTI-Net / InvPT evaluate PASCAL-Context and NYUD edges with SEISM, which is
the BSDS boundary benchmark):

1. For every threshold t of ``linspace(1/(N+1), N/(N+1), N)`` (N = 99: 0.01 ... 0.99) the edge
   probability map is binarised (``p >= t``) and **thinned** to one-pixel-wide curves
   (morphological thinning, as MATLAB's ``bwmorph(..., 'thin', inf)``).
2. Thinned prediction pixels and label edge pixels are put in **one-to-one correspondence**:
   a pair may match when the two pixels are at most ``max_dist x image diagonal`` apart
   (0.0075 on PASCAL-Context, 0.011 on NYUD-v2), and the number of matched pairs is the maximum
   over all one-to-one assignments (maximum bipartite matching, Hopcroft-Karp).  BSDS's
   ``correspondPixels`` solves a min-cost assignment whose outlier cost makes it prefer more
   matches, so the matched counts agree; only which pairs match may differ.
3. Per image and threshold: matched/predicted pixels (precision counts), matched/label pixels
   (recall counts).  **ODS**: counts summed over the data set per threshold, F = 2PR/(P+R), best
   threshold.  **OIS**: each image's best threshold, counts of those summed, then F.

Differences that remain against published tables: evaluation at the resolution the data module
delivers (448² resized labels in the MTLoRA protocol) instead of the original image size, the
maximum over the threshold grid instead of BSDS's interpolation between neighbouring thresholds
(at most a few hundredths of a point), and no non-maximum suppression of the network output (the
MTL papers apply none either).  Cost: one thinning and one matching per image and threshold, on
the CPU (about 10 s per 448² image with 99 thresholds on one core of a busy AMD EPYC); it is
meant for ``mtlora test --model.edge_eval exact``, not for every validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from mtlora.tasks import IGNORE_INDEX


def bsds_thresholds(n: int = 99) -> np.ndarray:
    """The benchmark's threshold grid: ``n`` values evenly inside (0, 1)."""
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


def matched_pixels(pred: np.ndarray, label: np.ndarray, radius: float) -> int:
    """Size of a maximum one-to-one matching of ``pred`` to ``label`` pixels at most ``radius`` apart."""
    from scipy.spatial import cKDTree

    p, g = np.argwhere(pred), np.argwhere(label)
    if len(p) == 0 or len(g) == 0:
        return 0
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(g), radius, output_type="ndarray")  # d = 0 kept
    if len(pairs) == 0:
        return 0
    order = np.lexsort((pairs["v"], pairs["i"]))  # per predicted pixel, nearest label pixels first
    rows, cols = pairs["i"][order], pairs["j"][order]
    indptr = np.searchsorted(rows, np.arange(len(p) + 1)).tolist()
    return _hopcroft_karp(indptr, cols.tolist(), len(p), len(g))


def _hopcroft_karp(indptr: list[int], adj: list[int], n_left: int, n_right: int) -> int:
    """Maximum bipartite matching size (Hopcroft-Karp; iterative, so long augmenting paths are fine).

    ``adj[indptr[u]:indptr[u + 1]]`` are the right vertices of left vertex ``u``, nearest first;
    a greedy nearest-first start leaves few augmenting phases.  (SciPy's
    ``maximum_bipartite_matching`` stalls on these near-perfect geometric graphs.)
    """
    match_l, match_r = [-1] * n_left, [-1] * n_right
    for u in range(n_left):
        for k in range(indptr[u], indptr[u + 1]):
            if match_r[adj[k]] < 0:
                match_l[u], match_r[adj[k]] = adj[k], u
                break
    while True:
        dist = [-1] * n_left
        queue = [u for u in range(n_left) if match_l[u] < 0 and indptr[u] < indptr[u + 1]]
        for u in queue:
            dist[u] = 0
        found, head = False, 0
        while head < len(queue):
            u = queue[head]
            head += 1
            for k in range(indptr[u], indptr[u + 1]):
                w = match_r[adj[k]]
                if w < 0:
                    found = True
                elif dist[w] < 0:
                    dist[w] = dist[u] + 1
                    queue.append(w)
        if not found:
            return sum(m >= 0 for m in match_l)
        pos = indptr[:-1]  # next edge to try, per left vertex
        for root in [u for u in range(n_left) if match_l[u] < 0 and dist[u] == 0]:
            stack = [root]
            while stack:
                u = stack[-1]
                if pos[u] == indptr[u + 1]:  # dead end: drop u from this phase
                    dist[u] = -1
                    stack.pop()
                    continue
                v = adj[pos[u]]
                w = match_r[v]
                if w < 0:  # free right vertex: flip the path root -> ... -> u -> v
                    for x in reversed(stack):
                        nxt = adj[pos[x]]
                        match_l[x], match_r[nxt] = nxt, x
                    break
                if dist[w] == dist[u] + 1:
                    stack.append(w)
                else:
                    pos[u] += 1
            # after a flip every vertex on the path is matched; the others keep their positions


def image_counts(
    prob: np.ndarray, label: np.ndarray, max_dist: float, thresholds: Sequence[float]
) -> np.ndarray:
    """``(len(thresholds), 4)`` int64: matched predicted, predicted, matched label, label pixels.

    ``prob``: ``(H, W)`` edge probabilities; ``label``: ``(H, W)`` in {0, 1}, ``IGNORE_INDEX``
    pixels are left out of both maps.
    """
    from skimage.morphology import thin

    valid = label != IGNORE_INDEX
    gt = (label == 1) & valid
    radius = max_dist * math.hypot(*label.shape)
    out = np.zeros((len(thresholds), 4), dtype=np.int64)
    n_gt = int(gt.sum())
    for k, t in enumerate(thresholds):
        pred = thin((prob >= t) & valid)
        matched = matched_pixels(pred, gt, radius)  # one-to-one: same count on both sides
        out[k] = (matched, int(pred.sum()), matched, n_gt)
    return out


def _f(match_p, n_p, match_r, n_r):
    precision = np.where(n_p > 0, match_p / np.maximum(n_p, 1), 0.0)
    recall = np.where(n_r > 0, match_r / np.maximum(n_r, 1), 0.0)
    return np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0
    )


def ods_ois(counts: np.ndarray) -> dict[str, float]:
    """ODS and OIS F (percent) from per-image counts ``(images, thresholds, 4)``."""
    if counts.size == 0:
        return {"odsF": float("nan"), "oisF": float("nan")}
    total = counts.sum(axis=0)
    ods = _f(*total.T.astype(np.float64)).max()
    per_image = _f(*np.moveaxis(counts.astype(np.float64), -1, 0))  # (images, thresholds)
    best = counts[np.arange(len(counts)), per_image.argmax(axis=1)].sum(axis=0)
    ois = float(_f(*best.astype(np.float64)))
    return {"odsF": 100.0 * float(ods), "oisF": 100.0 * ois}


class BSDSEdgeMetric(Metric):
    """``update(logits, target)`` per batch (``(B, 1, H, W)``); ``compute`` -> ``odsF_bsds``, ``oisF_bsds``.

    Keeps the per-image counts (``thresholds x 4`` integers per image), not the maps.
    """

    full_state_update = False

    def __init__(self, max_dist: float = 0.0075, num_thresholds: int = 99) -> None:
        super().__init__()
        self.max_dist = max_dist
        self.thresholds = bsds_thresholds(num_thresholds)
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor, sample_mask: Tensor | None = None) -> None:
        prob = torch.sigmoid(logits.detach().float()).cpu().numpy()
        label = target.detach().cpu().numpy()
        keep = (
            range(len(prob)) if sample_mask is None else torch.nonzero(sample_mask.cpu()).flatten().tolist()
        )
        for i in keep:
            counts = image_counts(prob[i, 0], label[i, 0], self.max_dist, self.thresholds)
            self.counts.append(torch.from_numpy(counts).unsqueeze(0).to(self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = self.counts
        if isinstance(counts, list):
            counts = (
                torch.cat(counts) if counts else torch.zeros(0, len(self.thresholds), 4, dtype=torch.long)
            )
        scores = ods_ois(counts.cpu().numpy())
        return {"odsF_bsds": torch.tensor(scores["odsF"]), "oisF_bsds": torch.tensor(scores["oisF"])}


def _read_map(path) -> np.ndarray:
    """An edge map file: ``.npy`` as stored, images (PNG ...) as their first channel."""
    from pathlib import Path

    from PIL import Image

    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as img:
        arr = np.asarray(img)
    return arr[..., 0] if arr.ndim == 3 else arr


def evaluate_edge_folders(
    pred_dir, label_dir, max_dist: float = 0.0075, num_thresholds: int = 99, workers: int = 1
) -> dict[str, float]:
    """ODS / OIS F (percent) of saved edge maps against label maps, matched by file name stem.

    Predictions: 8-bit images (value / 255 = probability) or ``.npy`` probabilities in [0, 1].
    Labels: images, where a value above 127 is an edge (the usual 0/255 edge PNGs), or ``.npy``
    with 1 = edge, 0 = no edge, 255 = ignored.
    """
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    preds = {p.stem: p for p in sorted(Path(pred_dir).iterdir()) if p.is_file()}
    labels = {p.stem: p for p in sorted(Path(label_dir).iterdir()) if p.is_file()}
    missing = sorted(set(preds) - set(labels))
    if not preds or missing:
        raise ValueError(
            f"edge maps in {pred_dir} need a label of the same name in {label_dir}: "
            + (f"no label for {missing[:5]}" if missing else "no prediction files found")
        )
    jobs = [(preds[k], labels[k], max_dist, num_thresholds) for k in preds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            counts = list(pool.map(_file_counts, jobs))
    else:
        counts = [_file_counts(job) for job in jobs]
    return {**ods_ois(np.stack(counts)), "images": len(counts)}


def _file_counts(job) -> np.ndarray:
    pred_path, label_path, max_dist, n = job
    pred, label = _read_map(pred_path), _read_map(label_path)
    if pred.shape != label.shape:
        raise ValueError(
            f"{pred_path}: shape {pred.shape} differs from its label {label_path}: {label.shape}"
        )
    prob = pred.astype(np.float64) / 255.0 if pred.dtype == np.uint8 else pred.astype(np.float64)
    if label_path.suffix == ".npy":
        label = np.where(label == IGNORE_INDEX, IGNORE_INDEX, (label > 0).astype(np.int64))
    else:
        label = (label > 127).astype(np.int64)
    return image_counts(prob, label, max_dist, bsds_thresholds(n))


def edge_eval_main(argv) -> dict[str, float]:
    """``mtlora edge_eval --pred DIR --labels DIR``: the benchmark scores of saved edge maps."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="mtlora edge_eval", description=edge_eval_main.__doc__)
    parser.add_argument("--pred", required=True, help="folder of predicted edge maps (8-bit images or .npy)")
    parser.add_argument("--labels", required=True, help="folder of label edge maps, same file stems")
    parser.add_argument(
        "--max_dist", type=float, default=0.0075, help="tolerance / image diagonal (NYUD 0.011)"
    )
    parser.add_argument("--thresholds", type=int, default=99, help="number of thresholds")
    parser.add_argument("--workers", type=int, default=1, help="processes (images are independent)")
    args = parser.parse_args(list(argv))
    try:
        scores = evaluate_edge_folders(args.pred, args.labels, args.max_dist, args.thresholds, args.workers)
    except (ValueError, OSError) as err:
        raise SystemExit(f"mtlora edge_eval: {err}") from None
    print(json.dumps(scores, indent=2))
    return scores
