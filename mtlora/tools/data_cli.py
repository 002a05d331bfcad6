"""``mtlora data check``: inspect a data folder before a long run.

Two ways to name the data: ``--data.root DIR`` (PASCAL_MT or NYUD folder, detected from its
layout, every task it supports) or ``--config X.yaml`` (the ``data`` section of a training
config, so exactly the tasks and options that run will use).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

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


def _prepare_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mtlora data prepare",
        description="Convert a raw PASCAL_MT / NYUD folder once into LitData chunks that train "
        "without .mat/PNG decoding and stream from shared or object storage.",
    )
    parser.add_argument("--config", type=str, help="training config: its data section names the tasks")
    parser.add_argument("--data.root", dest="root", type=str | None, default=None, help="raw data folder")
    parser.add_argument("--out", type=str, help="folder of the prepared data set (created)")
    parser.add_argument("--splits", type=list[str] | None, default=None, help="splits (default: all)")
    parser.add_argument("--num_workers", type=int, default=1, help="preparing processes")
    parser.add_argument(
        "--label_format",
        type=Literal["raw", "png"],
        default="raw",
        help="label maps as 'raw' uint8 (fastest to read) or 'png' (smaller)",
    )
    parser.add_argument("--chunk_bytes", type=str, default="64MB", help="target size of one chunk")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace a finished preparation")
    return parser


def _prepare_main(argv: list[str]) -> int:
    from mtlora.data.prepared import prepare_dataset

    args = _prepare_parser().parse_args(argv)
    if not args.config or not args.out:
        print("mtlora data prepare: give --config X.yaml and --out DIR", file=sys.stderr)
        return 2
    datamodule = _datamodule_from_config(args.config, args.root)
    manifest = prepare_dataset(
        datamodule,
        args.out,
        splits=args.splits,
        num_workers=args.num_workers,
        label_format=args.label_format,
        chunk_bytes=args.chunk_bytes,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{split}: {info['count']}" for split, info in manifest["splits"].items())
    print(f"prepared {manifest['datamodule']} ({counts}; tasks {manifest['tasks']}) in {args.out}")
    print(f"train or evaluate from it with --data.init_args.root {args.out}")
    return 0


def data_main(argv: list[str]) -> int:
    """Run ``mtlora data <command>``; returns the exit status (1 when problems were found)."""
    if argv[:1] == ["prepare"]:
        return _prepare_main(argv[1:])
    if argv[:1] != ["check"]:
        print(
            "usage: mtlora data check (--data.root DIR | --config X.yaml) [--splits ...] [--max_samples N]\n"
            "       mtlora data prepare --config X.yaml [--data.root RAW] --out DIR [--num_workers N]",
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
