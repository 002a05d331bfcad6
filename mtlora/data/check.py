"""Data folder check: every file of every sample, without stopping at the first problem.

Meant for ``mtlora data check --data.root DIR``: before a multi-hour run, list what is missing,
unreadable or mis-sized (a label whose ``H x W`` differs from its image) and how many samples
are complete for each task.  It works on any :class:`~mtlora.data.datamodule.MultiTaskDataModule`
through ``split_ids`` and ``sample_files`` (generated data sets have no files and pass trivially).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.dataset import SampleFile
from mtlora.data.io import DataError, DataRootNotFoundError

__all__ = ["DataCheckReport", "FileProblem", "SplitReport", "check_data_folder", "format_report"]

log = logging.getLogger(__name__)

ProblemKind = Literal["missing", "unreadable", "mis-sized"]


@dataclass
class FileProblem:
    """One bad file of one sample."""

    split: str
    sample_id: str
    kind: str
    """File kind ("image", "semseg", "label_map", ...)."""
    path: str
    problem: ProblemKind
    detail: str
    tasks: list[str]
    """Tasks that lose this sample because of the problem."""


@dataclass
class SplitReport:
    """Counts and problems of one split."""

    split: str
    samples: int = 0
    """Samples listed in the split file (checked: ``checked``)."""
    checked: int = 0
    complete: dict[str, int] = field(default_factory=dict)
    """Task -> checked samples whose files for that task are all present, readable and sized."""
    problems: list[FileProblem] = field(default_factory=list)
    error: str | None = None
    """Why the split could not be listed at all (e.g. missing split file)."""


@dataclass
class DataCheckReport:
    """Result of :func:`check_data_folder`; ``ok`` is True when nothing is wrong."""

    dataset: str
    root: str
    tasks: list[str]
    splits: dict[str, SplitReport]

    @property
    def problems(self) -> list[FileProblem]:
        return [problem for report in self.splits.values() for problem in report.problems]

    @property
    def ok(self) -> bool:
        return not self.problems and all(report.error is None for report in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable) of the report."""
        return {**asdict(self), "ok": self.ok}


def _datamodule_for_root(root: str | Path) -> MultiTaskDataModule:
    """Build the DataModule of a folder (PASCAL_MT or NYUD) with every task it supports."""
    from mtlora.data.nyud import NYUDDataModule
    from mtlora.data.pascal_context import PascalContextDataModule

    path = Path(root).expanduser()
    if (path / "JPEGImages").is_dir():
        return PascalContextDataModule(
            str(path), tasks=list(PascalContextDataModule.available_tasks), num_workers=0
        )
    if (path / "images").is_dir() and (path / "gt_sets").is_dir():
        return NYUDDataModule(str(path), num_workers=0)
    raise DataRootNotFoundError(
        f"{path} is neither a PASCAL_MT folder (JPEGImages/, ImageSets/Context/) nor a NYUD folder "
        "(images/, gt_sets/); run `mtlora fit --config configs/demo.yaml` for the synthetic data set"
    )


def check_data_folder(
    data: MultiTaskDataModule | str | Path,
    splits: list[str] | None = None,
    max_samples: int | None = None,
) -> DataCheckReport:
    """Check every file needed by the DataModule's tasks, for every sample of every split.

    Args:
        data: a DataModule instance (its ``tasks`` decide which files are needed), or a data
            root, in which case the PASCAL or NYUD module is built with all its tasks.
        splits: splits to check (default: all splits of the data set).
        max_samples: check only the first N samples per split (quick look).

    Returns:
        The report; format it with :func:`format_report`.
    """
    module = data if isinstance(data, MultiTaskDataModule) else _datamodule_for_root(data)
    if module.prepared is not None:  # decoded (and so checked) by `mtlora data prepare`
        raise DataError(
            f"{module.data_uri} is a prepared data set; check the raw folder it was prepared from "
            f"({module.prepared['source']})"
        )
    report = DataCheckReport(
        dataset=type(module).__name__,
        root=str(module.describe_root()),
        tasks=list(module.tasks),
        splits={},
    )
    for split in splits or module.data_splits():
        split_report = SplitReport(split=split, complete=dict.fromkeys(module.tasks, 0))
        report.splits[split] = split_report
        try:
            ids = module.split_ids(split)
        except DataError as err:
            split_report.error = str(err)
            continue
        split_report.samples = len(ids)
        for number, sample_id in enumerate(ids[:max_samples] if max_samples else ids):
            lost = _check_sample(module, split, sample_id, split_report.problems)
            split_report.checked += 1
            for task in module.tasks:
                split_report.complete[task] += task not in lost
            if (number + 1) % 500 == 0:
                log.info("%s: checked %d/%d samples", split, number + 1, len(ids))
    return report


def _check_sample(
    module: MultiTaskDataModule, split: str, sample_id: str, problems: list[FileProblem]
) -> set[str]:
    """Check the files of one sample; append problems; return the tasks that lose the sample."""
    lost: set[str] = set()
    image_shape: tuple[int, ...] | None = None
    files = sorted(module.sample_files(sample_id), key=lambda f: not f.is_image)  # image first
    for spec in files:
        path = spec.path
        problem, detail, shape = _check_file(spec, path, image_shape)
        if problem is not None:
            problems.append(
                FileProblem(split, sample_id, spec.kind, str(path), problem, detail, list(spec.tasks))
            )
            lost.update(spec.tasks)
        elif spec.is_image:
            image_shape = shape
    return lost


def _check_file(
    spec: SampleFile, path: Path, image_shape: tuple[int, ...] | None
) -> tuple[ProblemKind | None, str, tuple[int, ...] | None]:
    """``(problem or None, detail, H x W of the file or None)``."""
    if not path.exists():
        return "missing", "not found: " + " or ".join(str(candidate) for candidate in spec.candidates), None
    try:
        array = spec.read(path)
    except DataError as err:
        return "unreadable", str(err), None
    except Exception as err:  # a check reports every failure, whatever the decoder raised
        return "unreadable", f"{path}: {type(err).__name__}: {err}", None
    if array is None:
        return None, "", None
    shape = tuple(int(n) for n in array.shape[:2])
    if not spec.is_image and image_shape is not None and shape != image_shape:
        detail = f"size {shape[0]}x{shape[1]} differs from the image's {image_shape[0]}x{image_shape[1]}"
        return "mis-sized", detail, shape
    return None, "", shape


def format_report(report: DataCheckReport, max_listed: int = 20) -> str:
    """Human-readable summary: counts per split and task, then the problems (first ``max_listed`` per split)."""
    lines = [f"{report.dataset} at {report.root}", f"tasks: {', '.join(report.tasks)}"]
    for split, split_report in report.splits.items():
        if split_report.error is not None:
            lines.append(f"[{split}] cannot list samples: {split_report.error}")
            continue
        scope = "" if split_report.checked == split_report.samples else f" ({split_report.checked} checked)"
        lines.append(f"[{split}] {split_report.samples} samples{scope}")
        for task, count in split_report.complete.items():
            lines.append(f"  {task:<12} {count}/{split_report.checked} complete")
        by_kind: dict[str, int] = {}
        for problem in split_report.problems:
            by_kind[problem.problem] = by_kind.get(problem.problem, 0) + 1
        if by_kind:
            lines.append(
                "  problems: " + ", ".join(f"{count} {kind}" for kind, count in sorted(by_kind.items()))
            )
        for problem in split_report.problems[:max_listed]:
            lines.append(f"  {problem.problem:<10} {problem.path}  ({problem.detail})")
        if len(split_report.problems) > max_listed:
            lines.append(f"  ... and {len(split_report.problems) - max_listed} more")
    lines.append("OK: no problems found" if report.ok else f"FAILED: {len(report.problems)} problem(s)")
    return "\n".join(lines)
