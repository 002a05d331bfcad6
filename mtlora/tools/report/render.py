"""Rendering for ``mtlora report``: Pareto front, Markdown and CSV tables, the Δm/parameters plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from mtlora.io.atomic import write_atomic
from mtlora.tools.report.runs import RunRow


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For ``(trainable params, Δm)`` points: True where no other point has fewer-or-equal parameters
    and a higher-or-equal Δm with at least one strictly better (params minimised, Δm maximised)."""
    out = []
    for i, (p, d) in enumerate(points):
        dominated = any(q <= p and e >= d and (q < p or e > d) for j, (q, e) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def _columns(rows: Sequence[RunRow], published: bool) -> list[str]:
    from mtlora.tasks import TASKS

    keys = {k for r in rows for k in r.metrics}
    if published:
        keys |= {"semseg/mIoU", "human_parts/mIoU", "sal/mIoU", "normals/mean"}
    order = {task: i for i, task in enumerate(TASKS)}  # tasks not registered here go last
    return sorted(keys, key=lambda k: (order.get(k.split("/")[0], len(order)), k))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _arrow(key: str) -> str:
    from mtlora.metrics import METRIC_DIRECTIONS
    from mtlora.tasks import TASKS

    task, metric = key.split("/", 1)
    spec = TASKS.get(task)
    if spec is not None and spec.headline_metric == metric:  # the task's own declaration
        return "↑" if spec.higher_is_better else "↓"
    return "↑" if METRIC_DIRECTIONS.get(metric, True) else "↓"


def markdown(rows: Sequence[RunRow], published: Sequence[dict], title: str) -> str:
    """Measured table (+ a separate published table) as Markdown."""
    cols = _columns(rows, bool(published))
    head = [
        "Method",
        "Run",
        *[f"{c.replace('/', ' ')} {_arrow(c)}" for c in cols],
        "Δm %",
        "Trainable (M)",
        "Best epoch",
        "Selected by",
        "Pareto",
    ]
    lines = [f"# {title}", "", "## Measured", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.method,
            r.name,
            *[_fmt(r.metrics.get(c)) for c in cols],
            _fmt(r.delta_m),
            _fmt(None if r.trainable_params is None else r.trainable_params / 1e6, 3),
            "—" if r.best_epoch is None else str(r.best_epoch),
            r.selected_by,
            "✓" if r.pareto else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if published:
        lines += [
            "",
            "## Published reference rows (not measured here)",
            "",
            "MTLoRA paper Table 1: PASCAL-Context, Swin-T ImageNet-1k, 448², Δm as printed; "
            "comparable with measured rows only for the same data and protocol.",
            "",
        ]
        phead = [
            "Method",
            *[f"{c.replace('/', ' ')} {_arrow(c)}" for c in cols],
            "Δm % (printed)",
            "Trainable (M)",
            "Source",
        ]
        lines += ["| " + " | ".join(phead) + " |", "|" + "---|" * len(phead)]
        for p in published:
            cells = [
                p["method"],
                *[_fmt(p["metrics"].get(c)) for c in cols],
                _fmt(p["delta_m"]),
                _fmt(p["trainable_params_m"]),
                p["source"] + (f" ({p['note']})" if p["note"] else ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[RunRow], published: Sequence[dict]) -> str:
    """One CSV; the ``source`` column says ``measured`` or ``published: ...`` for every row.

    ``details``: where a measured row was read from (log folders, W&B run); a published row's note.
    """
    cols = _columns(rows, bool(published))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "source",
            "method",
            "run",
            *cols,
            "delta_m",
            "trainable_params_m",
            "best_epoch",
            "selected_by",
            "pareto",
            "details",
        ]
    )
    for r in rows:
        w.writerow(
            [
                "measured",
                r.method,
                r.name,
                *[r.metrics.get(c, "") for c in cols],
                "" if r.delta_m is None else r.delta_m,
                "" if r.trainable_params is None else r.trainable_params / 1e6,
                "" if r.best_epoch is None else r.best_epoch,
                r.selected_by,
                int(r.pareto),
                r.source,
            ]
        )
    for p in published:
        w.writerow(
            [
                f"published: {p['source']}",
                p["method"],
                "",
                *[p["metrics"].get(c, "") for c in cols],
                p["delta_m"],
                p["trainable_params_m"],
                "",
                "",
                "",
                p["note"],
            ]
        )
    return buf.getvalue()


def empty_plot_reason(rows: Sequence[RunRow]) -> str | None:
    """Why the Pareto plot has no measured point (``None`` when it has some); shown on the plot and the console."""
    if any(r.delta_m is not None and r.trainable_params for r in rows):
        return None
    if all(r.delta_m is None for r in rows):
        return "no run has Δm: train with --model.delta_m_baseline, or pass --baseline to recompute it"
    return "the runs with Δm have no trainable-parameter count (no val_results.json or hparams.yaml)"


def plot(rows: Sequence[RunRow], published: Sequence[dict], path: Path) -> None:
    """Δm against trainable parameters (log x), measured front marked, published rows as grey crosses."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    pts = [r for r in rows if r.delta_m is not None and r.trainable_params]
    if pts:
        ax.scatter(
            [r.trainable_params / 1e6 for r in pts],
            [r.delta_m for r in pts],
            c="tab:blue",
            zorder=3,
            label="measured",
        )
        front = sorted((r for r in pts if r.pareto), key=lambda r: r.trainable_params)
        ax.plot(
            [r.trainable_params / 1e6 for r in front],
            [r.delta_m for r in front],
            "-",
            c="tab:red",
            lw=1.5,
            marker="o",
            mfc="none",
            ms=11,
            zorder=2,
            label="Pareto front (measured)",
        )
        for r in pts:
            ax.annotate(
                r.method,
                (r.trainable_params / 1e6, r.delta_m),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    if published:
        ax.scatter(
            [p["trainable_params_m"] for p in published],
            [p["delta_m"] for p in published],
            marker="x",
            c="grey",
            zorder=1,
            label="published (MTLoRA Table 1, PASCAL; reference only)",
        )
        for p in published:
            ax.annotate(
                p["method"],
                (p["trainable_params_m"], p["delta_m"]),
                textcoords="offset points",
                xytext=(4, -9),
                fontsize=6,
                color="grey",
            )
    if not pts and not published:
        ax.text(
            0.5,
            0.5,
            empty_plot_reason(rows),
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="best")
    ax.axhline(0, c="k", lw=0.5)
    ax.set_xlabel("trainable parameters (M, log scale)")
    ax.set_ylabel("Δm (%) vs single task")
    ax.grid(True, which="both", alpha=0.3)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
