"""Reading finished runs for ``mtlora report``: CSV log folders and W&B runs -> one row per run."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SINGLE_TASK = "Single task (full FT)"


class ReportError(RuntimeError):
    """A report input is missing or unreadable (message says which and what was expected)."""


@dataclass
class RunRow:
    """One measured configuration at its selected epoch."""

    name: str
    method: str
    tasks: list[str]
    metrics: dict[str, float]  # "<task>/<headline metric>" at the selected epoch
    delta_m: float | None
    trainable_params: int | None
    best_epoch: int | str | None
    selected_by: str
    source: str
    pareto: bool = field(default=False)


# ----------------------------------------------------------------------------- selection
def select_best(records: Sequence[Mapping[str, float]]) -> tuple[Mapping[str, float], str]:
    """The selected validation record and the key that chose it.

    ``records`` are per-epoch ``{"val/...": value, "epoch": e}`` dicts.  The epoch is the one that
    was monitored in training: highest ``val/delta_m`` where logged, else lowest ``val/loss``;
    a run with neither keeps its last record.
    """
    if not records:
        raise ReportError("no validation records")
    with_dm = [r for r in records if r.get("val/delta_m") is not None]
    if with_dm:
        return max(with_dm, key=lambda r: r["val/delta_m"]), "val/delta_m"
    with_loss = [r for r in records if r.get("val/loss") is not None]
    if with_loss:
        return min(with_loss, key=lambda r: r["val/loss"]), "val/loss"
    return records[-1], "last epoch"


def make_row(
    name: str,
    source: str,
    method: str,
    tasks: list[str],
    records: Sequence[Mapping[str, float]],
    trainable: int | None,
    baseline: str | Mapping[str, float] | None,
) -> RunRow:
    """Select the epoch of one run; Δm as logged, or recomputed at that epoch against ``baseline``."""
    from mtlora.metrics import delta_m, headline_key

    best, how = select_best(records)
    metrics = {
        headline_key(t): float(best[f"val/{headline_key(t)}"])
        for t in tasks
        if f"val/{headline_key(t)}" in best
    }
    dm = best.get("val/delta_m")
    if baseline is not None:
        try:
            dm = delta_m(metrics, baseline, tasks=tasks, on_missing="skip")
        except (KeyError, ValueError) as err:
            raise ReportError(f"--baseline: no Δm for run {name} (tasks {list(tasks)}): {err}") from None
    epoch = best.get("epoch")
    return RunRow(
        name,
        method,
        tasks,
        metrics,
        None if dm is None else float(dm),
        trainable,
        None if epoch is None else int(epoch),
        how,
        source,
    )


# ----------------------------------------------------------------------------- CSV log folders
def find_csv_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Every run folder under ``roots``: a folder holding a Lightning ``metrics.csv``.

    A ``metrics.csv`` inside another run folder belongs to that run (``mtlora validate``/``test``
    of a run's checkpoint log into ``<run>/<command>-<checkpoint>/``) and is not a run of its own.
    """
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise ReportError(
                f"--runs: {root} does not exist (expected CSV log folders: <dir>/<name>/version_k)"
            )
        folders = sorted(p.parent for p in root.rglob("metrics.csv"))
        found += [f for f in folders if not any(o != f and f.is_relative_to(o) for o in folders)]
    return found


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """Per-epoch validation records of a CSVLogger ``metrics.csv`` (rows of one epoch merged)."""
    by_epoch: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {
                k: float(v) for k, v in row.items() if k and k.startswith("val/") and v not in ("", None)
            }
            if values and row.get("epoch") not in ("", None):
                epoch = int(float(row["epoch"]))
                by_epoch.setdefault(epoch, {"epoch": epoch}).update(values)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _params_from_hparams(hparams: Mapping[str, Any]) -> int:
    """Rebuild the model described by ``hparams.yaml`` (random init) and count its trainable parameters."""
    from mtlora.models.model import MultiTaskModel, parameter_counts

    model = MultiTaskModel.from_config(hparams)
    return parameter_counts(model)["trainable"]


def read_csv_run(folder: Path, root: Path | None, baseline: str | Mapping[str, float] | None) -> RunRow:
    """One CSV log folder -> :class:`RunRow`."""
    import yaml

    from mtlora.published import method_label

    records = read_metrics_csv(folder / "metrics.csv")
    if not records:
        raise ReportError(f"{folder / 'metrics.csv'}: no validation metrics (did the run validate?)")
    results_file = folder / "val_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    hparams_file = folder / "hparams.yaml"
    hparams = (yaml.safe_load(hparams_file.read_text()) or {}) if hparams_file.exists() else {}
    tasks = (
        results.get("tasks")
        or list(hparams.get("task_channels") or {})
        or sorted({k.split("/")[1] for r in records for k in r if k.count("/") == 2})
    )
    method = results.get("method") or (
        method_label(hparams["adapter"], tasks) if "adapter" in hparams else "?"
    )
    trainable = results.get("trainable_params")
    if trainable is None and "task_channels" in hparams:
        trainable = _params_from_hparams(hparams)
    name = str(folder.relative_to(root)) if root is not None and folder.is_relative_to(root) else str(folder)
    if name == ".":  # the run folder itself was given: its name, not "."
        name = folder.resolve().name
    return make_row(name, f"csv:{folder}", method, list(tasks), records, trainable, baseline)


# ----------------------------------------------------------------------------- W&B
def read_wandb_runs(
    project: str, baseline: str | Mapping[str, float] | None, api_factory: Callable[[], Any] | None = None
) -> list[RunRow]:
    """Finished runs of the W&B project ``entity/project`` (needs network access and a login)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportError(
            f"--wandb_project {project}: WANDB_MODE={mode}, but reading runs needs the W&B server; "
            "sync offline runs first (`wandb sync <run dir>`) and unset WANDB_MODE, or use --runs"
        )
    try:
        if api_factory is None:
            import wandb

            api_factory = lambda: wandb.Api(timeout=30)  # noqa: E731
        runs = list(api_factory().runs(project))
    except ImportError:
        raise ReportError("--wandb_project needs the wandb package: pip install 'mtlora[wandb]'") from None
    except Exception as err:  # network, authentication, unknown project
        raise ReportError(
            f"--wandb_project {project}: could not read the runs ({type(err).__name__}: {err}); "
            "it needs network access and `wandb login` (or WANDB_API_KEY)"
        ) from None
    from mtlora.published import method_label

    rows = []
    for run in runs:
        config = dict(run.config)
        records = [dict(r) for r in run.scan_history() if any(k.startswith("val/") for k in r)]
        records = [
            {
                k: v
                for k, v in r.items()
                if k == "epoch" or (k.startswith("val/") and isinstance(v, (int, float)))
            }
            for r in records
        ]
        if not records:
            log.warning("W&B run %s has no validation metrics; skipped", run.id)
            continue
        tasks = list(config.get("tasks") or config.get("task_channels") or [])
        method = config.get("method") or (
            method_label(config["adapter"], tasks) if "adapter" in config else "?"
        )
        rows.append(
            make_row(
                run.name,
                f"wandb:{project}/{run.id}",
                method,
                tasks,
                records,
                config.get("trainable_params"),
                baseline,
            )
        )
    return rows


# ----------------------------------------------------------------------------- table
def combine_single_task(rows: list[RunRow]) -> list[RunRow]:
    """Merge single-task runs of distinct tasks into one Table-1 style row (summed parameters)."""
    single = [r for r in rows if r.method == SINGLE_TASK and len(r.tasks) == 1]
    tasks = [r.tasks[0] for r in single]
    if len(single) < 2 or len(set(tasks)) != len(tasks):
        return rows
    params = [r.trainable_params for r in single]
    dms = [r.delta_m for r in single]
    merged = RunRow(
        name=" + ".join(r.name for r in single),
        method=SINGLE_TASK,
        tasks=tasks,
        metrics={k: v for r in single for k, v in r.metrics.items()},
        delta_m=sum(dms) / len(dms) if all(d is not None for d in dms) else None,  # Δm is a mean over tasks
        trainable_params=sum(params) if all(p is not None for p in params) else None,
        best_epoch="per run",
        selected_by=single[0].selected_by,
        source="; ".join(r.source for r in single),
    )
    return [merged] + [r for r in rows if r not in single]
