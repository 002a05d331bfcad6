"""``mtlora data check``: inspect a data folder before a long run.

Two ways to name the data: ``--data.root DIR`` (PASCAL_MT or NYUD folder, detected from its
layout, every task it supports) or ``--config X.yaml`` (the ``data`` section of a training
config, so exactly the tasks and options that run will use).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import yaml
from jsonargparse import ArgumentParser

if TYPE_CHECKING:  # torch and Lightning load only once a check runs, not for --help
    from mtlora.data import MultiTaskDataModule


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mtlora data check", description=__doc__)
    parser.add_argument(
        "--config", type=str, default=None, help="training config whose data section is checked"
    )
    parser.add_argument(
        "--data.root", dest="root", type=str, default=None, help="data folder (PASCAL_MT or NYUD)"
    )
    parser.add_argument(
        "--splits", type=list[str] | None, default=None, help="splits to check (default: all)"
    )
    parser.add_argument(
        "--max_samples", type=int | None, default=None, help="check only the first N per split"
    )
    parser.add_argument("--json", type=str | None, default=None, help="also write the report as JSON here")
    return parser


def _datamodule_from_config(path: str, root: str | None) -> MultiTaskDataModule:
    from jsonargparse import ArgumentParser as _AP

    from mtlora.data import MultiTaskDataModule

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    data = config.get("data")
    if isinstance(data, str):  # a nested config file, relative to the including file
        from pathlib import Path

        with open(Path(path).parent / data) as f:
            data = yaml.safe_load(f)
    if not isinstance(data, dict) or "class_path" not in data:
        raise SystemExit(f"{path}: no 'data' section with a class_path; pass --data.root DIR instead")
    if root is not None:
        data.setdefault("init_args", {})["root"] = root
    parser = _AP()
    parser.add_subclass_arguments(MultiTaskDataModule, "data")
    cfg = parser.parse_object({"data": data})
    return parser.instantiate_classes(cfg).data


def data_main(argv: list[str]) -> int:
    """Run ``mtlora data <command>``; returns the exit status (1 when problems were found)."""
    if argv[:1] != ["check"]:
        print(
            "usage: mtlora data check (--data.root DIR | --config X.yaml) [--splits ...] [--max_samples N]",
            file=sys.stderr,
        )
        return 2
    args = _parser().parse_args(argv[1:])
    if args.config is None and args.root is None:
        print("mtlora data check: give --data.root DIR or --config X.yaml", file=sys.stderr)
        return 2
    from mtlora.data import check_data_folder, format_report

    data = _datamodule_from_config(args.config, args.root) if args.config else args.root
    report = check_data_folder(data, splits=args.splits, max_samples=args.max_samples)
    print(format_report(report))
    if args.json:
        from dataclasses import asdict

        from mtlora.io.atomic import write_json_atomic

        write_json_atomic(args.json, asdict(report))
    return 0 if report.ok else 1
