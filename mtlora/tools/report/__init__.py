"""``mtlora report``: a Table-1-style comparison of finished runs, and Δm against trainable parameters.

Sources: Lightning CSV log folders (``<dir>/<name>/version_k/metrics.csv`` + ``hparams.yaml`` + the
``val_results.json`` of :class:`~mtlora.training.callbacks.ResultsWriter`) found under ``--runs``, and the
runs of a W&B project (``--wandb_project entity/project``, through ``wandb.Api``).

Per run: the epoch monitored in training (best ``val/delta_m``, else lowest ``val/loss``), the
tasks' headline metrics at that epoch, Δm (as logged, or recomputed at that epoch against the
single-task reference ``--baseline`` for every run), and the trainable parameters (from
``val_results.json`` or the W&B run config; else rebuilt from ``hparams.yaml``).  Single-task
runs of distinct tasks are combined into one "Single task" row with summed parameters, as in
Table 1.  Outputs (written atomically): ``table.md``, ``table.csv`` and ``pareto.png`` (log-x Δm
vs trainable parameters, Pareto front of the measured runs marked).  ``--published true`` adds the
MTLoRA paper's rows as a separate table section, ``source=published`` CSV rows and grey reference
markers; they never enter the measured front.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtlora.io.atomic import write_text_atomic
from mtlora.tools.report.render import csv_text, empty_plot_reason, markdown, pareto_front, plot
from mtlora.tools.report.runs import (
    ReportError,
    RunRow,
    combine_single_task,
    find_csv_runs,
    read_csv_run,
    read_metrics_csv,
    read_wandb_runs,
    select_best,
)

log = logging.getLogger(__name__)

__all__ = [
    "ReportError",
    "RunRow",
    "build_report",
    "combine_single_task",
    "pareto_front",
    "read_csv_run",
    "read_metrics_csv",
    "read_wandb_runs",
    "report_main",
    "select_best",
]


def build_report(
    runs: Sequence[str | Path] = (),
    out: str | Path = "reports/table",
    wandb_project: str | None = None,
    published: bool = False,
    baseline: str | Mapping[str, float] | None = None,
    title: str = "Multi-task results",
) -> dict[str, Any]:
    """Read the runs, write ``table.md``, ``table.csv`` and ``pareto.png`` under ``out``; returns the rows."""
    if not runs and not wandb_project:
        raise ReportError("give --runs DIR (CSV log folders) and/or --wandb_project entity/project")
    rows: list[RunRow] = []
    for root in runs:
        for folder in find_csv_runs([root]):
            try:
                rows.append(read_csv_run(folder, Path(root), baseline))
            except ReportError as err:
                log.warning("skipped %s", err)
    if wandb_project:
        rows += read_wandb_runs(wandb_project, baseline)
    if not rows:
        raise ReportError(
            f"no finished runs with validation metrics under {list(map(str, runs))}"
            + (f" or in W&B project {wandb_project}" if wandb_project else "")
        )
    rows = combine_single_task(rows)
    scored = [r for r in rows if r.delta_m is not None and r.trainable_params]
    for r, on_front in zip(scored, pareto_front([(r.trainable_params, r.delta_m) for r in scored])):
        r.pareto = on_front
    from mtlora.metrics import PUBLISHED_PASCAL_ROWS

    ref = list(PUBLISHED_PASCAL_ROWS) if published else []
    out = Path(out)
    paths = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "pareto.png"}
    md = markdown(rows, ref, title)
    write_text_atomic(paths["markdown"], md)
    text = csv_text(rows, ref)
    write_text_atomic(paths["csv"], text)
    plot(rows, ref, paths["plot"])
    return {"rows": rows, "paths": paths, "markdown": md, "empty_plot_reason": empty_plot_reason(rows)}


def report_main(argv: Sequence[str]) -> dict[str, Any]:
    """``mtlora report``: parse the options, build the report, print the Markdown table."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="mtlora report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=str, nargs="*", default=[], help="folders searched for CSV log folders"
    )
    parser.add_argument(
        "--wandb_project", type=str | None, default=None, help="also read W&B runs of entity/project"
    )
    parser.add_argument(
        "--out", type=str, default="reports/table", help="output folder (table.md, table.csv, pareto.png)"
    )
    parser.add_argument(
        "--published", type=bool, default=False, help="add the MTLoRA paper's Table-1 rows as references"
    )
    parser.add_argument(
        "--baseline",
        type=str | dict[str, float] | None,
        default=None,
        help="recompute Δm of every run at its selected epoch against this single-task reference "
        '(a named set or {"task/metric": value}) instead of using the logged val/delta_m',
    )
    parser.add_argument("--title", type=str, default="Multi-task results", help="title of table.md")
    parser.add_argument(
        "--experiment",
        type=str | None,
        default=None,
        help="lay out the runs of `mtlora sweep --experiment X` like the paper's table/figure X "
        "(table1|table2|table3|fig4|fig5); --runs defaults to runs/sweeps/X, files go to --out/X.*",
    )
    args = parser.parse_args(list(argv))
    if args.experiment:
        return _experiment_main(args)
    try:
        result = build_report(
            args.runs, args.out, args.wandb_project, args.published, args.baseline, args.title
        )
    except ReportError as err:
        print(f"mtlora report: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["markdown"])
    print(f"wrote {', '.join(str(p) for p in result['paths'].values())}")
    if result["empty_plot_reason"]:
        print(f"{result['paths']['plot']} shows no measured run: {result['empty_plot_reason']}")
    return result


def _experiment_main(args) -> dict[str, Any]:
    from mtlora.tools.report.experiments import experiment_report

    out = "reports" if args.out == "reports/table" else args.out
    try:
        result = experiment_report(args.experiment, args.runs[0] if args.runs else None, out, args.baseline)
    except (ReportError, ValueError) as err:
        print(f"mtlora report: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["markdown"])
    print(f"wrote {', '.join(str(p) for p in result['paths'].values())}")
    return result
