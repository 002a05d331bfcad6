"""The MTLoRA paper's experiments as lists of runs: what ``mtlora sweep`` trains and ``mtlora report
--experiment`` lays out.

Each experiment is a list of :class:`Run` (a shipped config plus command-line overrides, under a
fixed run name so the report finds it again).  Published values (Tables 2 and 3) sit beside the
runs; they are only ever shown next to measured numbers, never mixed into them.

* ``table1``: every Table-1 row (:data:`mtlora.published.BASELINE_CONFIGS`), the single-task
  rows once per task.
* ``table2``: MTLoRA r=64 (the table's "None" column) and the same model without the low-rank
  modules of one layer type.  The paper's text says rank 32, but its "None" column (8.34M,
  Δm +2.55) is the r=64 model of Table 1, and the four counts fit r=64 exactly.
* ``table3``: MTLoRA r=64 with one module outside the blocks frozen.
* ``fig4``: task-agnostic-only LoRA against MTLoRA (task-specific modules, task rank 4) over the
  shared ranks 4-64.
* ``fig5``: MTLoRA r=16 and r=32 on Swin-B (ImageNet-22k weights) against single-task full
  fine-tuning of the same backbone, per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASCAL_TASKS = ("semseg", "human_parts", "sal", "normals")
FIG4_RANKS = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    Args:
        name: run folder name under the experiment (logger name); the report finds runs by it.
        label: row or column heading in the report.
        config: shipped config, relative to the repository.
        args: command-line overrides appended after the config(s).
        series: figure series the run belongs to (``fig4``: task-agnostic / task-specific).
        x: the figure's x value where it is not the parameter count (``fig4``: the rank).
        single_task: the task of a single-task reference run (its metrics are the Δm reference).
    """

    name: str
    label: str
    config: str
    args: tuple[str, ...] = ()
    series: str = ""
    x: float | None = None
    single_task: str | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    runs: tuple[Run, ...]
    kind: str = "table"  # "table" (one row per run) or "figure"
    published: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (Δm %, M)


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "_", label.replace("+", " plus").lower()).strip("_")


def _single_task_runs(config: str) -> list[Run]:
    """One full fine-tuning run per PASCAL task: the single-task row, and a measured Δm reference."""
    return [
        Run(
            f"single_task_{t}",
            "Single task (full FT)",
            config,
            ("--data.init_args.tasks", f"[{t}]"),
            single_task=t,
        )
        for t in PASCAL_TASKS
    ]


def _table1() -> Experiment:
    from mtlora.published import BASELINE_CONFIGS, PER_TASK_SUFFIX

    single = BASELINE_CONFIGS["Single task (full FT)"]
    runs = _single_task_runs(single)
    runs += [
        Run(_slug(label), label, config) for label, config in BASELINE_CONFIGS.items() if config != single
    ]
    # the paper's setting of its adapter rows: one set per task, one encoder pass per task
    runs += [
        Run(
            _slug(label) + "_per_task",
            label + PER_TASK_SUFFIX,
            BASELINE_CONFIGS[label],
            ("--model.adapter.per_task", "true"),
        )
        for label in PER_TASK_ROWS
    ]
    return Experiment(
        "table1",
        "Table 1: MTLoRA against parameter-efficient baselines (PASCAL-Context, Swin-T)",
        tuple(runs),
    )


PER_TASK_ROWS = ("Adapter", "BitFit", "VPT-shallow", "VPT-deep", "Compacter", "Compacter++")


R64 = "configs/swin_tiny_r64.yaml"
TABLE2 = {
    "None": R64,
    **{f"No {t}": f"configs/ablations/table2_no_{t}.yaml" for t in ("fc1", "fc2", "proj", "qkv")},
}
TABLE3 = {
    f"Freeze {w.replace('_', ' ')}": f"configs/ablations/table3_freeze_{w}.yaml"
    for w in ("patch_embed", "layer_norm", "position_bias", "patch_merging")
}
# Tables 2 and 3 of the paper: Δm (%) and trainable parameters (M) as printed.  Table 2 truncates
# the counts (6,816,314 -> 6.81), Table 3 rounds them (6,796,346 -> 6.80).
PUBLISHED_TABLE2 = {
    "None": (2.55, 8.34),
    "No fc1": (1.93, 6.81),
    "No fc2": (1.65, 6.81),
    "No proj": (1.65, 7.73),
    "No qkv": (1.26, 7.21),
}
PUBLISHED_TABLE3 = {
    "Freeze patch embed": (2.02, 8.34),
    "Freeze layer norm": (2.06, 8.32),
    "Freeze position bias": (1.99, 8.32),
    "Freeze patch merging": (1.74, 6.80),
}
_LABELS = {  # published column -> the configuration's method label (mtlora.published.method_label)
    **{f"No {t}": f"MTLoRA r=64 (no {t})" for t in ("fc1", "fc2", "proj", "qkv")},
    **{
        f"Freeze {w}": f"MTLoRA r=64 (frozen {w})"
        for w in ("patch embed", "layer norm", "position bias", "patch merging")
    },
}
PUBLISHED_ABLATIONS: list[dict] = [
    {"method": _LABELS[col], "delta_m": dm, "trainable_params_m": m, "table": table}
    for table, published in (("Table 2", PUBLISHED_TABLE2), ("Table 3", PUBLISHED_TABLE3))
    for col, (dm, m) in published.items()
    if col in _LABELS
]
"""Table 2 / Table 3 columns keyed by method label, for ``mtlora summary``'s paper comparison."""


def _fig4() -> Experiment:
    runs = []
    for r in FIG4_RANKS:
        rank = ("--model.adapter.shared_rank", str(r))
        runs.append(Run(f"task_specific_r{r}", f"MTLoRA r={r}", R64, rank, "task-specific", r))
        runs.append(
            Run(
                f"task_agnostic_r{r}",
                f"Task-agnostic LoRA r={r}",
                "configs/baselines/lora_task_agnostic.yaml",
                rank,
                "task-agnostic",
                r,
            )
        )
    return Experiment(
        "fig4", "Fig. 4: task-agnostic only vs task-specific low-rank modules", tuple(runs), "figure"
    )


def _fig5() -> Experiment:
    runs = _single_task_runs("configs/ablations/fig5_single_task_swin_base.yaml")
    runs += [
        Run(
            f"mtlora_swin_base_r{r}",
            f"MTLoRA r={r}",
            f"configs/ablations/fig5_swin_base_r{r}.yaml",
            series="mtlora",
            x=r,
        )
        for r in (16, 32)
    ]
    return Experiment(
        "fig5",
        "Fig. 5: MTLoRA on Swin-B (ImageNet-22k) relative to single-task fine-tuning",
        tuple(runs),
        "figure",
    )


def experiment(name: str) -> Experiment:
    """The runs of ``name`` (``table1``, ``table2``, ``table3``, ``fig4``, ``fig5``)."""
    if name == "table1":
        return _table1()
    if name == "table2":
        return Experiment(
            "table2",
            "Table 2: removing the low-rank modules of one layer type (MTLoRA r=64)",
            tuple(Run(_slug(c), c, cfg) for c, cfg in TABLE2.items()),
            published=PUBLISHED_TABLE2,
        )
    if name == "table3":
        return Experiment(
            "table3",
            "Table 3: freezing the modules outside the transformer blocks (MTLoRA r=64)",
            tuple(Run(_slug(c), c, cfg) for c, cfg in TABLE3.items()),
            published=PUBLISHED_TABLE3,
        )
    if name == "fig4":
        return _fig4()
    if name == "fig5":
        return _fig5()
    raise ValueError(f"--experiment: unknown {name!r}; choose one of {list(EXPERIMENTS)}")


EXPERIMENTS = ("table1", "table2", "table3", "fig4", "fig5")
