"""Cost of one ``mtlora predict`` panel (drawing + PNG file), all six tasks with ground truth.

The maps are smooth random fields (low-resolution noise upsampled bilinearly, as decoder outputs
are), so the PNG compresses like a real prediction rather than like white noise.  The first
panel (imports, font and colour-map set-up) is excluded.

    python benchmarks/predict_panel.py --size 448 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mtlora.visualize import save_panel

CHANNELS = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1, "depth": 1}


def smooth(channels: int, size: int) -> torch.Tensor:
    coarse = torch.randn(1, channels, max(size // 32, 2), max(size // 32, 2))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    s = args.size
    image = smooth(3, s)
    preds = {task: smooth(c, s) * 3 for task, c in CHANNELS.items()}
    targets = {
        "semseg": smooth(21, s).argmax(0),
        "human_parts": smooth(7, s).argmax(0),
        "sal": (smooth(1, s) > 0).float(),
        "normals": F.normalize(smooth(3, s), dim=0),
        "edge": (smooth(1, s).abs() < 0.05).float(),
        "depth": smooth(1, s).abs() * 3,
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_panel(str(Path(tmp) / "warm-up.png"), image, preds, targets, title="warm-up")
        start = time.perf_counter()
        for i in range(args.repeats):
            save_panel(str(Path(tmp) / f"{i}.png"), image, preds, targets, title=str(i))
        seconds = (time.perf_counter() - start) / args.repeats
        size_kb = (Path(tmp) / "0.png").stat().st_size / 1024
    print(f"{s}x{s}, 6 tasks, prediction + ground truth: {seconds:.3f} s/panel ({size_kb:.0f} KiB)")


if __name__ == "__main__":
    main()
