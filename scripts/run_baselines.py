"""Run every Table-1 baseline on the synthetic data set (CPU, minutes) and build the report.

``make baselines`` calls this.  Steps:

1. Pre-train a stand-in backbone (the ImageNet weights of the paper's setting, which are not
   available offline): the tiny Swin of ``configs/baselines/synthetic.yaml`` fully fine-tuned on
   *other* tasks (depth, edge) and *other* scenes (data seed 1), saved in the Microsoft Swin
   checkpoint format, then loaded by every run through ``--model.encoder.pretrained``.
2. Single-task baselines, one full fine-tuning run per task; their headline metrics at the
   epoch with the lowest validation loss become the Δm reference of the sweep (the published
   PASCAL single-task numbers do not apply to synthetic data).
3. Every other baseline config (:data:`mtlora.baselines.BASELINE_CONFIGS`) composed with
   ``configs/baselines/synthetic.yaml`` and ``--model.delta_m_baseline <measured reference>``.
4. ``mtlora report`` over all runs: ``<report>/table.md``, ``table.csv``, ``pareto.png``.

Every run uses the same data, steps and optimiser recipe; only the adapter section differs.  The
numbers check the plumbing and the relative behaviour of the methods on a toy problem, not the
paper's claims (ranks of 16-64 are not low-rank for a 32-256 wide encoder).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "baselines" / "synthetic.yaml"
TASKS = ["semseg", "human_parts", "sal", "normals"]


def fit(config: str, name: str, out: Path, extra: list[str]):
    """One in-process ``mtlora fit`` of ``config`` composed with the synthetic setting."""
    from mtlora.cli import run_cli

    args = [
        "fit",
        "-c",
        str(ROOT / config),
        "-c",
        str(SYNTHETIC),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.default_root_dir",
        str(out / name),
        *extra,
    ]
    start = time.perf_counter()
    cli = run_cli(args)
    logging.getLogger("run_baselines").warning("%s: %.0f s", name, time.perf_counter() - start)
    return cli


def pretrain_backbone(out: Path, epochs: int) -> Path:
    """Step 1: full fine-tuning on depth + edge of seed-1 scenes; returns the Microsoft-format file."""
    cli = fit(
        "configs/baselines/mtl_full.yaml",
        "backbone",
        out,
        [
            "--data.init_args.tasks",
            "[depth, edge]",
            "--data.init_args.seed",
            "1",
            "--trainer.max_epochs",
            str(epochs),
            "--model.delta_m_baseline",
            "null",
        ],
    )
    path = out / "backbone" / "backbone.pth"
    torch.save(
        {"model": cli.model.model.backbone.state_dict()}, path
    )  # Microsoft layout: loads like a release
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/baselines", help="folder of the CSV log folders")
    parser.add_argument(
        "--report", default="reports/baselines", help="folder of table.md/table.csv/pareto.png"
    )
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per run (30 steps each)")
    parser.add_argument("--pretrain_epochs", type=int, default=8, help="epochs of the stand-in backbone")
    parser.add_argument("--only", nargs="*", default=None, help="run only these labels (after single task)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared CPUs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import; quieten them afterwards)

    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from mtlora.baselines import BASELINE_CONFIGS
    from mtlora.metrics import headline_key
    from mtlora.report import build_report, read_csv_run

    out = Path(args.out) / "runs"
    start = time.perf_counter()
    backbone = pretrain_backbone(Path(args.out) / "pretrain", args.pretrain_epochs)
    common = ["--model.encoder.pretrained", str(backbone), "--trainer.max_epochs", str(args.epochs)]
    reference: dict[str, float] = {}
    for task in TASKS:
        cli = fit(
            BASELINE_CONFIGS["Single task (full FT)"],
            f"single_task_{task}",
            out,
            [*common, "--data.init_args.tasks", f"[{task}]", "--model.delta_m_baseline", "null"],
        )
        row = read_csv_run(Path(cli.trainer.log_dir), out, None)
        reference[headline_key(task)] = row.metrics[headline_key(task)]
        if not reference[headline_key(task)] > 0:
            raise SystemExit(
                f"single-task {task}: {headline_key(task)} = {reference[headline_key(task)]} cannot be "
                f"a Δm reference; train longer (--epochs, now {args.epochs})"
            )
    (Path(args.out) / "single_task_reference.json").write_text(json.dumps(reference, indent=2))
    for label, config in BASELINE_CONFIGS.items():
        if label == "Single task (full FT)" or (args.only and label not in args.only):
            continue
        name = re.sub(r"[^a-z0-9]+", "_", label.replace("+", " plus").lower()).strip("_")
        fit(config, name, out, [*common, "--model.delta_m_baseline", json.dumps(reference)])
    result = build_report(
        runs=[out],
        out=args.report,
        baseline=reference,
        title=f"Baselines on synthetic data ({args.epochs} epochs per run, CPU)",
    )
    print(result["markdown"])
    print(f"single-task reference: {reference}")
    print(f"total {time.perf_counter() - start:.0f} s; wrote {', '.join(map(str, result['paths'].values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
