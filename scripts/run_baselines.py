"""Table 1 on synthetic data: ``make baselines``, kept for old command lines.

The runner is ``mtlora sweep`` (mtlora/tools/sweep.py); this is exactly::

    mtlora sweep --experiment table1 --out runs/baselines --override configs/baselines/synthetic.yaml \\
        --standin_epochs 8 --reference measured
    mtlora report --experiment table1 --runs runs/baselines/table1 --out reports/baselines
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from mtlora.cli import run_cli

    synthetic = str(ROOT / "configs" / "baselines" / "synthetic.yaml")
    run_cli(
        [
            "sweep",
            "--experiment",
            "table1",
            "--out",
            "runs/baselines",
            "--override",
            synthetic,
            "--standin_epochs",
            "8",
            "--reference",
            "measured",
        ]
    )
    run_cli(
        ["report", "--experiment", "table1", "--runs", "runs/baselines/table1", "--out", "reports/baselines"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
