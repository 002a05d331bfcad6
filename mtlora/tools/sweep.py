"""``mtlora sweep``: train every run of one of the paper's experiments, once.

    mtlora sweep --experiment table1|table2|table3|fig4|fig5 --data.root DIR [--dry_run true]

Runs are ``mtlora fit`` commands (see :mod:`mtlora.experiments`) executed in this process, one
after the other, logging to ``<out>/<experiment>/<run name>/version_k``; the report finds them by
those names (``mtlora report --experiment ...``).  A run that finished has a ``sweep_done.json``
beside its versions and is skipped; a run folder without it was interrupted and continues with
``--ckpt_path last`` (``mtlora fit`` finds the run's newest ``last.ckpt``; without one the run
starts again).

``--reference measured`` runs the single-task runs first (the experiment's own, or the Swin-T
single-task fine-tuning of Table 1) and passes their headline metrics to the other runs as the Δm
reference, for data whose published single-task numbers do not apply (synthetic data, another
backbone).  ``--override FILE`` composes a config after every run's own (e.g. the tiny CPU setting
``configs/baselines/synthetic.yaml``), and ``--standin_epochs N`` first trains a stand-in
backbone with that setting on other tasks and scenes and starts every run from it (ImageNet
weights are unavailable offline).  Arguments after ``--`` are appended to every command.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mtlora.experiments import EXPERIMENTS, Run, experiment

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DONE = "sweep_done.json"


def _path(config: str) -> str:
    """A config named relative to the repository, or as given (absolute / relative to the cwd)."""
    return str(ROOT / config) if (ROOT / config).is_file() else config


def fit_args(
    run: Run, out: Path, overrides: Sequence[str], data_root: str | None, extra: Sequence[str]
) -> list[str]:
    """The ``mtlora fit`` arguments of ``run`` (without ``--ckpt_path``)."""
    args = ["fit", "-c", _path(run.config)]
    for override in overrides:
        args += ["-c", override]
    args += list(run.args)
    if data_root is not None:
        args += ["--data.init_args.root", data_root]
    args += [
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        run.name,
        "--trainer.default_root_dir",
        str(out / run.name),
    ]
    return args + list(extra)


def trainable_count(args: Sequence[str]) -> int | None:
    """Trainable parameters of the model ``args`` describe, via ``mtlora summary`` (no weights, no data)."""
    from mtlora.cli import run_cli

    keep = list(args[1:])
    # drop the logger/run-folder options: summary has no logger
    for key in (
        "--trainer.logger.init_args.save_dir",
        "--trainer.logger.init_args.name",
        "--trainer.default_root_dir",
    ):
        if key in keep:
            i = keep.index(key)
            del keep[i : i + 2]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                run_cli(["summary", *keep, "--macs", "false", "--json_out", str(out)])
        except (SystemExit, Exception) as err:  # a config the summary cannot build: say so, go on
            log.warning("could not count %s: %s", " ".join(keep[:2]), err)
            return None
        return json.loads(out.read_text())["parameters"]["trainable"]


def pretrain_standin(out: Path, overrides: Sequence[str], epochs: int) -> Path:
    """Full fine-tuning on depth + edge of other scenes (data seed 1), saved as a Microsoft Swin file."""

    from mtlora.cli import run_cli

    path = out / "standin_backbone" / "backbone.pth"
    if path.is_file():
        return path
    run = Run("standin_backbone", "stand-in backbone", "configs/baselines/mtl_full.yaml")
    extra = ["--data.init_args.tasks", "[depth, edge]", "--data.init_args.seed", "1"]
    extra += ["--trainer.max_epochs", str(epochs), "--model.delta_m_baseline", "null"]
    cli = run_cli(fit_args(run, out, overrides, None, extra))
    from mtlora.io.serialization import atomic_torch_save

    atomic_torch_save(
        {"model": cli.model.model.backbone.state_dict()}, path
    )  # loads like a Microsoft release
    return path


def measured_reference(out: Path, runs: Sequence[Run]) -> dict[str, float]:
    """Headline metric of every single-task run at its selected epoch: the Δm reference."""
    from mtlora.metrics import headline_key
    from mtlora.tools.report.experiments import read_sweep_run

    reference = {}
    for run in runs:
        row = read_sweep_run(out / run.name, None)
        key = headline_key(run.single_task)
        value = row.metrics.get(key)
        if value is None or not value > 0:
            raise SystemExit(
                f"mtlora sweep: single-task run {run.name}: {key} = {value} cannot be a Δm reference "
                "(train longer?)"
            )
        reference[key] = value
    return reference


def sweep(
    name: str,
    out: str | Path = "runs/sweeps",
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    reference: str = "published",
    standin_epochs: int = 0,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    extra: Sequence[str] = (),
) -> list[dict]:
    """Run (or with ``dry_run`` list) the runs of experiment ``name``; returns one dict per run."""
    from mtlora.cli import run_cli
    from mtlora.io.atomic import write_json_atomic

    exp = experiment(name)
    out = Path(out) / name
    for override in overrides:
        if not Path(override).is_file():
            raise SystemExit(f"mtlora sweep: --override {override} does not exist (expected a config file)")
    runs = list(exp.runs)
    singles = [r for r in runs if r.single_task]
    if reference == "measured" and not singles:
        singles = [r for r in experiment("table1").runs if r.single_task]
        runs = singles + runs
    if only:
        unknown = sorted(set(only) - {r.name for r in runs})
        if unknown:
            raise SystemExit(f"mtlora sweep: --only {unknown}: not runs of {name} ({[r.name for r in runs]})")
    common = list(extra)
    if standin_epochs and not dry_run:
        common = [
            "--model.encoder.pretrained",
            str(pretrain_standin(out, overrides, standin_epochs)),
            *common,
        ]
    reference_args: list[str] = []
    done = []
    for i, run in enumerate(runs):
        if only and run.name not in only and not (reference == "measured" and run in singles):
            continue
        if reference == "measured" and not run.single_task and not reference_args and not dry_run:
            ref = measured_reference(out, singles)
            write_json_atomic(out / "reference.json", ref)
            reference_args = ["--model.delta_m_baseline", json.dumps(ref)]
        args = fit_args(run, out, overrides, data_root, [*common, *reference_args])
        marker = out / run.name / DONE
        status = "done" if marker.is_file() else ("resume" if (out / run.name).is_dir() else "new")
        if status == "resume":
            args += ["--ckpt_path", "last"]
        info = {
            "name": run.name,
            "label": run.label,
            "status": status,
            "command": "mtlora " + shlex.join(args),
        }
        if dry_run:
            info["trainable"] = trainable_count(args)
            count = f"{info['trainable']:,}" if info["trainable"] is not None else "?"
            print(f"[{i + 1}/{len(runs)}] {run.name} ({status}): {count} trainable\n  {info['command']}")
            done.append(info)
            continue
        if status == "done":
            print(f"[{i + 1}/{len(runs)}] {run.name}: finished earlier, skipped")
            done.append(info)
            continue
        print(f"[{i + 1}/{len(runs)}] {run.name}: {info['command']}")
        start = time.perf_counter()
        cli = run_cli(args)
        info.update(seconds=round(time.perf_counter() - start, 1), global_step=cli.trainer.global_step)
        write_json_atomic(marker, info)
        done.append(info)
    return done


def sweep_main(argv: Sequence[str]) -> list[dict]:
    """``mtlora sweep`` command line."""
    import argparse

    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="mtlora sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, choices=EXPERIMENTS)
    parser.add_argument("--data.root", dest="data_root", default=None, help="data set folder of every run")
    parser.add_argument("--out", default="runs/sweeps", help="runs go to OUT/<experiment>/<run name>")
    parser.add_argument("--override", action="append", default=[], help="config composed after each run's")
    parser.add_argument(
        "--reference",
        choices=("published", "measured"),
        default="published",
        help="Δm reference: the configs' published one, or measured single-task runs",
    )
    parser.add_argument("--standin_epochs", type=int, default=0, help="pre-train a stand-in backbone first")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these run names (with --reference measured the single-task runs always run)",
    )
    parser.add_argument(
        "--dry_run",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        nargs="?",
        const=True,
        default=False,
        help="print the commands and trainable counts, train nothing",
    )
    args = parser.parse_args(argv)
    return sweep(
        args.experiment,
        args.out,
        args.data_root,
        args.override,
        args.reference,
        args.standin_epochs,
        args.only,
        args.dry_run,
        extra,
    )
