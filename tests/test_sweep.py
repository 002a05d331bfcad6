"""``mtlora sweep`` + ``mtlora report --experiment`` end to end on tiny synthetic runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from mtlora.cli import run_cli
from mtlora.tools.report.experiments import experiment_report

REPO = Path(__file__).parents[1]
TINY = str(REPO / "tests" / "configs" / "sweep_tiny.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(out: Path, *extra: str) -> None:
    run_cli(["sweep", "--experiment", "table2", "--out", str(out), "--override", TINY, *extra])


def test_dry_run_prints_commands_and_counts_and_trains_nothing(tmp_path, capsys):
    sweep(tmp_path, "--dry_run")
    text = capsys.readouterr().out
    assert text.count("mtlora fit -c ") == 5
    assert "table2_no_qkv.yaml" in text and "--trainer.logger.init_args.name no_qkv" in text
    counts = {
        line.split("]")[1].split()[0]: line.rsplit(":", 1)[1]
        for line in text.splitlines()
        if "trainable" in line
    }
    n = {name: int(c.split()[0].replace(",", "")) for name, c in counts.items()}
    # same tiny encoder: removing a layer's low-rank modules removes trainable parameters
    assert all(n[f"no_{t}"] < n["none"] for t in ("qkv", "proj", "fc1", "fc2"))
    assert n["no_fc1"] == n["no_fc2"]  # fc1 (C -> 4C) and fc2 (4C -> C) adapters are the same size
    assert not (tmp_path / "table2").exists()


def test_sweep_runs_skips_resumes_and_reports_like_table_2(tmp_path, capsys):
    sweep(tmp_path, "--only", "none", "no_qkv")
    out = tmp_path / "table2"
    done = json.loads((out / "no_qkv" / "sweep_done.json").read_text())
    assert done["global_step"] == 2 and done["status"] == "new"
    capsys.readouterr()
    sweep(tmp_path, "--only", "none", "no_qkv")  # both finished: nothing trains
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    # an interrupted run (no marker) continues from its last.ckpt, logging into a new version
    (out / "no_qkv" / "sweep_done.json").unlink()
    sweep(tmp_path, "--only", "no_qkv", "--", "--trainer.max_steps", "-1", "--trainer.max_epochs", "2")
    done = json.loads((out / "no_qkv" / "sweep_done.json").read_text())
    assert done["status"] == "resume" and done["command"].endswith("--ckpt_path last")
    assert done["global_step"] == 4  # epoch 0 restored, epoch 1 (two steps) trained
    steps = []  # train rows of every log file of the run (a resumed run may log in a new version)
    for path in (out / "no_qkv").rglob("metrics.csv"):
        with open(path) as f:
            steps += [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sorted(steps) == [0, 1, 2, 3]  # continued: steps 0-1 were not trained a second time

    result = experiment_report("table2", out, tmp_path / "reports")
    md = result["markdown"]
    header = md.splitlines()[2]
    assert header == "| |None|No fc1|No fc2|No proj|No qkv|"
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1] for line in md.splitlines() if line.startswith("| ")
    }
    assert [c.strip() for c in rows["Δm (%) paper"]] == ["2.55", "1.93", "1.65", "1.65", "1.26"]
    assert [c.strip() for c in rows["Trainable (M) paper"]] == ["8.34", "6.81", "6.81", "7.73", "7.21"]
    ours = [c.strip() for c in rows["Δm (%) ours"]]
    assert ours[0] != "—" and ours[4] != "—" and ours[1:4] == ["—", "—", "—"]  # measured runs only
    by_name = {r.name: r for r in result["rows"]}
    assert by_name["no_qkv"].trainable_params < by_name["none"].trainable_params
    assert by_name["no_qkv"].best_epoch in (0, 1)  # epochs of both versions are candidates
    assert "no_fc1: " in md  # the untrained runs are named
    assert (tmp_path / "reports" / "table2.csv").is_file()


def write_run(root: Path, name: str, metrics: dict, trainable: int, method: str, tasks: list[str]) -> None:
    logger = CSVLogger(save_dir=root, name=name, version=0)
    logger.log_metrics({**metrics, "val/loss": 1.0, "epoch": 0}, step=9)
    logger.save()
    facts = {"method": method, "trainable_params": trainable, "tasks": tasks, "metrics": {}}
    (Path(logger.log_dir) / "val_results.json").write_text(json.dumps(facts))


TASKS = ["semseg", "human_parts", "sal", "normals"]
KEYS = ["semseg/mIoU", "human_parts/mIoU", "sal/mIoU", "normals/mean"]


def test_fig5_relative_improvement_over_single_task_runs(tmp_path):
    runs = tmp_path / "fig5"
    reference = dict(zip(KEYS, [50.0, 40.0, 60.0, 20.0]))
    for task, key in zip(TASKS, KEYS):
        write_run(
            runs,
            f"single_task_{task}",
            {f"val/{key}": reference[key]},
            87_000_000,
            "Single task (full FT)",
            [task],
        )
    # r=16: +10 % semseg, +5 % parts, -5 % sal, normals 18 vs 20 (lower is better: +10 %)
    better = {
        "val/semseg/mIoU": 55.0,
        "val/human_parts/mIoU": 42.0,
        "val/sal/mIoU": 57.0,
        "val/normals/mean": 18.0,
    }
    write_run(runs, "mtlora_swin_base_r16", better, 8_517_560, "MTLoRA r=16", TASKS)
    result = experiment_report("fig5", runs, tmp_path / "reports")
    row = next(line for line in result["markdown"].splitlines() if line.startswith("| MTLoRA r=16"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["8.52", "10.00", "5.00", "-5.00", "10.00", "5.00"]
    assert "mtlora_swin_base_r32: " in result["markdown"]  # not trained: named as missing
    assert (tmp_path / "reports" / "fig5.png").read_bytes()[:8] == PNG_MAGIC


def test_fig4_plots_both_series_from_measured_runs(tmp_path, capsys):
    runs = tmp_path / "fig4"
    for r, dm_ts, dm_ta in ((4, -1.0, -2.0), (8, 0.5, -1.5)):
        for series, dm, label in (
            ("task_specific", dm_ts, f"MTLoRA r={r}"),
            ("task_agnostic", dm_ta, f"Task-agnostic LoRA r={r}"),
        ):
            write_run(
                runs,
                f"{series}_r{r}",
                {"val/delta_m": dm, "val/semseg/mIoU": 30.0},
                1_000_000 * r,
                label,
                TASKS,
            )
    run_cli(["report", "--experiment", "fig4", "--runs", str(runs), "--out", str(tmp_path / "reports")])
    text = capsys.readouterr().out
    assert "| task-specific | 8 | 8.00 | 0.50 |" in text and "| task-agnostic | 4 | 4.00 | -2.00 |" in text
    assert (tmp_path / "reports" / "fig4.png").read_bytes()[:8] == PNG_MAGIC


def test_unknown_experiment_and_missing_runs_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["sweep", "--experiment", "table9"])
    assert "invalid choice: 'table9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["report", "--experiment", "table2", "--runs", str(tmp_path / "nothing")])
    assert "run `mtlora sweep --experiment table2` first" in capsys.readouterr().err


def test_table1_with_standin_backbone_and_measured_reference(tmp_path, capsys):
    run_cli(
        ["sweep", "--experiment", "table1", "--out", str(tmp_path), "--override", TINY, "--standin_epochs", "1",
         "--reference", "measured", "--only", "adapter_per_task"]
    )  # fmt: skip
    out = tmp_path / "table1"
    assert (out / "standin_backbone" / "backbone.pth").is_file()
    reference = json.loads((out / "reference.json").read_text())
    assert sorted(reference) == sorted(KEYS) and all(v > 0 for v in reference.values())
    done = json.loads((out / "adapter_per_task" / "sweep_done.json").read_text())
    assert (
        "--model.encoder.pretrained" in done["command"] and "--model.adapter.per_task true" in done["command"]
    )
    assert json.dumps(reference) in done["command"] or "--model.delta_m_baseline" in done["command"]
    capsys.readouterr()
    run_cli(["report", "--experiment", "table1", "--runs", str(out), "--out", str(tmp_path / "reports")])
    text = capsys.readouterr().out
    assert "Adapter (one set per task)" in text and "Single task (full FT)" in text
    assert "11.24" in text  # the paper's Adapter row, in its own section
    assert (tmp_path / "reports" / "table1.png").read_bytes()[:8] == PNG_MAGIC
