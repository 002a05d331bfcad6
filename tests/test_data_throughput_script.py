"""benchmarks/data_throughput.py runs end to end on a few samples (its numbers are not checked here:
speed targets live in the benchmark's own report, not in tests)."""

import importlib.util
import logging
import re
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "data_throughput.py"


def test_data_throughput_runs_and_reports_all_three_pipelines(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("data_throughput", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # the script's own log setup
    script.main(
        [
            "--images",
            "4",
            "--cost-samples",
            "4",
            "--rounds",
            "1",
            "--workers",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
        ]
    )
    out = capsys.readouterr().out
    for case in (
        "(a) raw folder + CPU augmentation",
        "(b) prepared + CPU augmentation",
        "(c) prepared + device",
    ):
        row = next(line for line in out.splitlines() if line.startswith(f"| {case}"))
        ms, mb = (float(x) for x in re.findall(r"\| ([0-9.]+) ", row + " ")[:2])
        assert ms > 0 and mb > 0, row
    assert "DeviceAugment" in out and "| 0 |" in out  # device-side cost and the 0-worker loader row
