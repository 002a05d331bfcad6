"""Start-up time and peak memory of ``mtlora`` commands that only print help.

Each command runs in a fresh process (``python -m mtlora.cli ...``), ``--repeats`` times; the
best wall time is kept (other load on a shared machine only ever slows a run down) together
with the largest peak resident memory of its runs.  Help output is the cheapest a
command can do, so this is the start-up cost every command pays before any work.

    python benchmarks/cli_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--help"],
    ["report", "--help"],
    ["data", "check", "--help"],
    ["summary", "--help"],
]


def measure(args: list[str], repeats: int) -> tuple[float, float]:
    """Best wall seconds and peak RSS (MB) of ``python -m mtlora.cli <args>``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    best = float("inf")
    peak = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtlora.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in kB)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"mtlora {' '.join(args)} failed:\n{stderr.decode()[-2000:]}")
        best = min(best, elapsed)
        peak = max(peak, usage.ru_maxrss / 1024)
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", nargs="*", default=None, help="e.g. 'report --help' (quoted)")
    opts = parser.parse_args()
    commands = [c.split() for c in opts.commands] if opts.commands else COMMANDS
    print("| command | best wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for args in commands:
        seconds, rss = measure(args, opts.repeats)
        print(f"| `mtlora {' '.join(args)}` | {seconds:.2f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
