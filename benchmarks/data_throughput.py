"""Throughput of the PASCAL-Context training pipeline (decode + augment + collate) per worker count.

Writes a fake PASCAL_MT folder in the real file formats (JPEG, palette/plain PNG, PASCAL-Part
and LabelMap .mat files) at the typical PASCAL size 500x375 into a temporary directory, then
times the training DataLoader at 448x448 with 0, 1 and 2 workers.  The first batch of every
run (worker start-up) is excluded.  With ``--update-results`` the table replaces the section
"## Data pipeline throughput" of benchmarks/RESULTS.md (the rest of the file is kept).

    python benchmarks/data_throughput.py --update-results
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake-folder writer lives with the test fixtures

from mtlora.data import PascalContextDataModule  # noqa: E402

from fixtures_data import write_fake_pascal  # noqa: E402

log = logging.getLogger("data_throughput")
SECTION = "## Data pipeline throughput"


def measure(root: Path, tasks: list[str], workers: int, batch_size: int, img_size: int, epochs: int) -> float:
    """Images per second of the training loader, first batch excluded."""
    dm = PascalContextDataModule(
        str(root),
        tasks=tasks,
        batch_size=batch_size,
        num_workers=workers,
        img_size=img_size,
        persistent_workers=True,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    images, start = 0, None
    for _ in range(epochs):
        for batch in loader:
            if start is None:  # start the clock after the first batch (worker start-up)
                start = time.perf_counter()
                continue
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def stage_times(root: Path, tasks: list[str], img_size: int, samples: int = 32) -> tuple[float, float, float]:
    """Milliseconds per sample for decoding and for augment + to-tensor (main process), and MB per sample."""
    dm = PascalContextDataModule(str(root), tasks=tasks, num_workers=0, img_size=img_size)
    ids = dm.split_ids("train")[:samples]
    reader, transform = dm.make_reader("train"), dm.build_transform(train=True)
    start = time.perf_counter()
    decoded = [reader(sample_id) for sample_id in ids]
    decode_ms = (time.perf_counter() - start) * 1000 / len(ids)
    start = time.perf_counter()
    outputs = [transform(sample) for sample in decoded]
    augment_ms = (time.perf_counter() - start) * 1000 / len(ids)
    sample_mb = sum(t.numel() * t.element_size() for t in outputs[0].values()) / 2**20
    return decode_ms, augment_ms, sample_mb


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def update_results(path: Path, section: str) -> None:
    """Replace (or append) our section of RESULTS.md, keeping every other section."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    try:
        start = lines.index(SECTION)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + [""]
    except ValueError:
        lines += ["", *section.rstrip("\n").splitlines()]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="fake training images (500x375)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["semseg", "human_parts", "sal", "normals"])
    parser.add_argument("--update-results", action="store_true", help="write the table into RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # as in DataLoader workers (seed_worker): one core per process

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "PASCAL_MT"
        start = time.perf_counter()
        write_fake_pascal(root, n_train=args.images, n_val=1, size=(375, 500))
        log.info("wrote %d fake samples in %.1f s", args.images, time.perf_counter() - start)
        load = os.getloadavg()[0]
        decode_ms, augment_ms, sample_mb = stage_times(root, args.tasks, args.img_size)
        rates = {
            w: measure(root, args.tasks, w, args.batch_size, args.img_size, args.epochs) for w in args.workers
        }

    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU container ({cpu_model()})"
    command = "python benchmarks/data_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cores_per_step = 32 * (decode_ms + augment_ms) / 1000
    scaling_note = ""
    if 0 in rates and len(rates) > 1 and max(r for w, r in rates.items() if w > 0) <= rates[0]:
        scaling_note = (
            f"\nHere workers do not beat the main process: the container has {os.cpu_count()} cores, "
            f"the other jobs kept about {load:.1f} of them busy,\nand every batch crosses process boundaries."
        )
    rows = "\n".join(f"| {w} | {rate:.1f} |" for w, rate in rates.items())
    section = f"""{SECTION}

Training pipeline of `PascalContextDataModule` (decode JPEG/PNG/.mat, flip + rotate/zoom warp,
resize to {args.img_size}², ignore regions, normalisation, collate), tasks {", ".join(args.tasks)},
on {args.images} fake PASCAL_MT samples of 500x375 written in the real formats; batch
{args.batch_size}, {args.epochs} epochs, first batch excluded, torch and OpenCV limited to 1 thread per process.

Machine: {cpu}, shared with other jobs (1-min load average {load:.1f} at start), so
numbers are indicative.  Command: `{command.strip()}`.

| DataLoader workers | images/s |
|---|---|
{rows}

Per sample in the main process: decoding {decode_ms:.1f} ms, augmentation + to-tensor {augment_ms:.1f} ms;
each sample is {sample_mb:.1f} MB of tensors (int64 label maps, float32 image/normals/sal) that
workers pass to the main process through shared memory.  So one training step per second at the
official batch 32 needs about {cores_per_step:.1f} CPU cores of data loading.{scaling_note}
"""
    print(section)
    if args.update_results:
        update_results(ROOT / "benchmarks" / "RESULTS.md", section)
        log.info("updated %s", ROOT / "benchmarks" / "RESULTS.md")


if __name__ == "__main__":
    main()
