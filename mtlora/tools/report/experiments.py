"""``mtlora report --experiment``: the runs of ``mtlora sweep`` laid out like the paper's table or figure.

* ``table1``: the Table-1 layout of ``mtlora report`` (measured rows, then the published ones).
* ``table2`` / ``table3``: one column per variant as in the paper, rows Δm and trainable
  parameters, ours and the paper's on separate rows (never mixed), then our per-task metrics.
* ``fig4``: Δm against trainable parameters, one line per series (task-agnostic only,
  task-specific), points labelled with the rank.
* ``fig5``: per-task improvement (%) of MTLoRA on Swin-B relative to the single-task runs of the
  same backbone, and Δm, one bar group per rank.

Runs are read from ``<runs>/<run name>/version_*`` (every version of a resumed run, later epochs
winning); a run not yet trained is listed as missing.  Δm is recomputed against
``<runs>/reference.json`` when the sweep measured one (``--reference measured``), or ``--baseline``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlora.experiments import PASCAL_TASKS, experiment
from mtlora.io.atomic import write_atomic
from mtlora.tools.report.render import _fmt, csv_text, markdown, pareto_front, plot
from mtlora.tools.report.runs import (
    ReportError,
    RunRow,
    combine_single_task,
    find_csv_runs,
    make_row,
    read_csv_run,
    read_metrics_csv,
)


def _version(folder: Path) -> int:
    tail = folder.name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def read_sweep_run(folder: Path, baseline: str | Mapping[str, float] | None) -> RunRow:
    """One sweep run (all its logger versions) -> :class:`RunRow` named after the run folder."""
    if not folder.is_dir():
        raise ReportError(f"{folder}: not trained yet (run `mtlora sweep` first)")
    versions = sorted(find_csv_runs([folder]), key=_version)
    if not versions:
        raise ReportError(f"{folder}: no metrics.csv in any version (did the run validate?)")
    by_epoch: dict[Any, dict] = {}
    for version in versions:  # a resumed run logs its later epochs in a new version
        for record in read_metrics_csv(version / "metrics.csv"):
            by_epoch.setdefault(record.get("epoch"), {}).update(record)
    records = [by_epoch[e] for e in sorted(by_epoch, key=lambda e: -1 if e is None else e)]
    latest = read_csv_run(versions[-1], folder.parent, None)
    return make_row(
        folder.name, f"csv:{folder}", latest.method, latest.tasks, records, latest.trainable_params, baseline
    )


def _rows(name: str, runs_dir: Path, baseline) -> tuple[list[tuple[Any, RunRow | None]], list[str]]:
    found, missing = [], []
    for run in experiment(name).runs:
        try:
            found.append((run, read_sweep_run(runs_dir / run.name, baseline)))
        except ReportError as err:
            missing.append(f"{run.name}: {err}")
            found.append((run, None))
    return found, missing


def _m(params: int | None) -> str:
    return "—" if params is None else f"{params / 1e6:.2f}"


def _ablation_table(name: str, pairs, published: Mapping[str, tuple[float, float]]) -> tuple[str, str]:
    labels = [run.label for run, _ in pairs]
    rows = [
        ["Δm (%) ours"] + [_fmt(row.delta_m if row else None) for _, row in pairs],
        ["Δm (%) paper"] + [_fmt(published.get(label, (None, None))[0]) for label in labels],
        ["Trainable (M) ours"] + [_m(row.trainable_params if row else None) for _, row in pairs],
        ["Trainable (M) paper"] + [_fmt(published.get(label, (None, None))[1]) for label in labels],
    ]
    keys = sorted({k for _, row in pairs if row for k in row.metrics})
    rows += [[f"{k} ours"] + [_fmt(row.metrics.get(k) if row else None) for _, row in pairs] for k in keys]
    md = ["| |" + "|".join(labels) + "|", "|---" * (len(labels) + 1) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows([["", *labels], *rows])
    return "\n".join(md), buf.getvalue()


def _fig4(pairs, path: Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    lines = ["| series | rank | trainable (M) | Δm (%) |", "|---|---|---|---|"]
    for series, colour in (("task-agnostic", "tab:orange"), ("task-specific", "tab:blue")):
        pts = sorted(
            ((run.x, row) for run, row in pairs if run.series == series and row and row.delta_m is not None),
            key=lambda point: point[0],
        )
        pts = [(r, row) for r, row in pts if row.trainable_params]  # a point needs both coordinates
        lines += [
            f"| {series} | {r:g} | {_m(row.trainable_params)} | {_fmt(row.delta_m)} |" for r, row in pts
        ]
        if pts:
            xs, ys = [row.trainable_params / 1e6 for _, row in pts], [row.delta_m for _, row in pts]
            label = "task-agnostic only" if series == "task-agnostic" else "MTLoRA (task-specific)"
            ax.plot(xs, ys, "-o", c=colour, label=label)
            for (r, _), x, y in zip(pts, xs, ys):
                ax.annotate(f"r={r:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("trainable parameters (M)")
    ax.set_ylabel("Δm (%)")
    ax.set_title("Task-agnostic only vs task-specific low-rank modules")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    return "\n".join(lines)


def _fig5(pairs, path: Path) -> str:
    from matplotlib.figure import Figure

    from mtlora.metrics import delta_m, headline_key, relative_changes

    reference = {
        headline_key(run.single_task): row.metrics[headline_key(run.single_task)]
        for run, row in pairs
        if run.single_task and row and headline_key(run.single_task) in row.metrics
    }
    models = [(run, row) for run, row in pairs if not run.single_task and row]
    keys = [headline_key(t) for t in PASCAL_TASKS if headline_key(t) in reference]
    lines = ["| model | trainable (M) | " + " | ".join(keys) + " | Δm (%) |", "|---" * (len(keys) + 3) + "|"]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / max(len(models), 1)
    for i, (run, row) in enumerate(models):
        if not keys:
            break
        changes = relative_changes(
            row.metrics, reference, tasks=[k.split("/")[0] for k in keys], on_missing="skip"
        )
        values = [changes.get(k) for k in keys] + [delta_m(row.metrics, reference, on_missing="skip")]
        lines.append(
            f"| {run.label} | {_m(row.trainable_params)} | " + " | ".join(_fmt(v) for v in values) + " |"
        )
        ax.bar([j + i * width for j in range(len(values))], values, width, label=run.label)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys) + 1)])
    ax.set_xticklabels([k.split("/")[0] for k in keys] + ["Δm"])
    ax.axhline(0, c="k", lw=0.5)
    ax.set_ylabel("improvement over single-task fine-tuning (%)")
    ax.set_title("MTLoRA on Swin-B (ImageNet-22k)")
    if models and keys:
        ax.legend(fontsize=8)
    else:
        lines.append("(needs the single-task runs and at least one MTLoRA run)")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    return "\n".join(lines)


def experiment_report(
    name: str,
    runs_dir: str | Path | None = None,
    out: str | Path = "reports",
    baseline: str | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``<out>/<name>.md`` (+ ``.csv``, and ``.png`` for figures and Table 1); returns text and paths."""
    exp = experiment(name)
    runs_dir = Path(runs_dir or f"runs/sweeps/{name}")
    if not runs_dir.is_dir():
        raise ReportError(f"--runs {runs_dir}: no such folder (run `mtlora sweep --experiment {name}` first)")
    if baseline is None and (runs_dir / "reference.json").is_file():
        baseline = json.loads((runs_dir / "reference.json").read_text())
    pairs, missing = _rows(name, runs_dir, baseline if name != "fig5" else None)
    out = Path(out)
    paths = {"markdown": out / f"{name}.md"}
    body = ""
    if name == "table1":
        rows = combine_single_task([row for _, row in pairs if row])
        scored = [r for r in rows if r.delta_m is not None and r.trainable_params]
        for r, front in zip(scored, pareto_front([(r.trainable_params, r.delta_m) for r in scored])):
            r.pareto = front
        from mtlora.metrics import PUBLISHED_PASCAL_ROWS

        body = markdown(rows, PUBLISHED_PASCAL_ROWS, exp.title)
        paths["csv"], paths["plot"] = out / f"{name}.csv", out / f"{name}.png"
        text = csv_text(rows, PUBLISHED_PASCAL_ROWS)
        write_atomic(paths["csv"], lambda tmp: Path(tmp).write_text(text))
        plot(rows, PUBLISHED_PASCAL_ROWS, paths["plot"])
    elif name in ("table2", "table3"):
        body, text = _ablation_table(name, pairs, exp.published)
        body = (
            f"# {exp.title}\n\n{body}\n\nPaper values are as printed; ours are measured, on their own rows."
        )
        paths["csv"] = out / f"{name}.csv"
        write_atomic(paths["csv"], lambda tmp: Path(tmp).write_text(text))
    else:
        paths["plot"] = out / f"{name}.png"
        body = f"# {exp.title}\n\n" + (_fig4 if name == "fig4" else _fig5)(pairs, paths["plot"])
    if missing:
        body += "\n\nNot in the report:\n" + "\n".join(f"- {m}" for m in missing)
    md = body + "\n"
    write_atomic(paths["markdown"], lambda tmp: Path(tmp).write_text(md))
    return {"rows": [row for _, row in pairs if row], "missing": missing, "paths": paths, "markdown": md}
