"""`mtlora report` on fixture runs written by Lightning's own CSVLogger (+ val_results.json)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import CSVLogger

from mtlora.cli import run_cli
from mtlora.tools.report import ReportError, build_report, pareto_front, read_wandb_runs

from conftest import tiny_encoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def epoch_metrics(semseg: float, normals: float, delta_m: float | None = None, loss: float = 1.0) -> dict:
    out = {
        "val/semseg/mIoU": semseg,
        "val/semseg/pixel_acc": 50.0,
        "val/normals/mean": normals,
        "val/loss": loss,
    }
    if delta_m is not None:
        out["val/delta_m"] = delta_m
    return out


def write_run(
    root: Path, name: str, epochs: list[dict], results: dict | None = None, hparams: dict | None = None
) -> Path:
    """A log folder in the real CSVLogger format: train rows between per-epoch validation rows."""
    logger = CSVLogger(save_dir=root, name=name)
    if hparams:
        logger.log_hyperparams(hparams)
    for epoch, metrics in enumerate(epochs):
        logger.log_metrics({"train/loss": 2.0 - epoch / 10, "epoch": epoch}, step=10 * epoch + 5)
        logger.log_metrics({**metrics, "epoch": epoch}, step=10 * epoch + 9)
    logger.save()
    folder = Path(logger.log_dir)
    if results is not None:
        (folder / "val_results.json").write_text(json.dumps(results))
    return folder


def facts(method: str, params: int, tasks=("semseg", "normals")) -> dict:
    return {"method": method, "trainable_params": params, "tasks": list(tasks), "metrics": {}}


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_run(
        root,
        "houlsby",
        [epoch_metrics(30, 20, -5.0), epoch_metrics(32, 19, -2.0), epoch_metrics(31, 19.5, -3.0)],
        facts("Adapter", 4_000_000),
    )
    write_run(
        root,
        "decoders",
        [epoch_metrics(25, 24, -8.0), epoch_metrics(26, 24, -9.0)],
        facts("MTL - decoders only", 1_000_000),
    )
    write_run(root, "full", [epoch_metrics(35, 17, 1.0)], facts("MTL - full fine-tuning", 30_000_000))
    write_run(root, "dominated", [epoch_metrics(20, 30, -12.0)], facts("VPT-deep", 2_000_000))
    # single-task runs: no Δm, the epoch with the lowest val/loss is selected
    write_run(
        root,
        "st_semseg",
        [{"val/semseg/mIoU": 33.0, "val/loss": 1.0}, {"val/semseg/mIoU": 34.0, "val/loss": 0.8}],
        facts("Single task (full FT)", 28_000_000, ["semseg"]),
    )
    write_run(
        root,
        "st_normals",
        [{"val/normals/mean": 18.0, "val/loss": 0.5}, {"val/normals/mean": 18.5, "val/loss": 0.7}],
        facts("Single task (full FT)", 27_600_000, ["normals"]),
    )
    return root


def rows_by_method(result) -> dict:
    return {r.method: r for r in result["rows"]}


def test_pareto_front_on_hand_made_points():
    points = [(1, 0.0), (2, 1.0), (2, 0.5), (3, 1.0), (0.5, -3.0), (4, 2.0), (4, 2.0), (5, 1.9)]
    assert pareto_front(points) == [True, True, False, False, True, True, True, False]


def test_report_selects_best_epochs_combines_single_task_and_marks_the_front(runs, tmp_path):
    result = build_report([runs], tmp_path / "out")
    rows = rows_by_method(result)
    adapter = rows["Adapter"]
    assert adapter.best_epoch == 1 and adapter.delta_m == -2.0 and adapter.selected_by == "val/delta_m"
    assert adapter.metrics == {"semseg/mIoU": 32.0, "normals/mean": 19.0}
    single = rows["Single task (full FT)"]  # two single-task runs -> one Table-1 row
    assert single.metrics == {"semseg/mIoU": 34.0, "normals/mean": 18.0} and single.selected_by == "val/loss"
    assert single.trainable_params == 55_600_000 and single.delta_m is None
    assert {m for m, r in rows.items() if r.pareto} == {
        "MTL - decoders only",
        "Adapter",
        "MTL - full fine-tuning",
    }
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| Adapter | houlsby/version_0 | 32.00 | 19.00 | -2.00 | 4.000 | 1 | val/delta_m | ✓ |" in md
    assert "Published" not in md
    with open(tmp_path / "out" / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["source"] for r in table} == {"measured"} and len(table) == 5
    png = (tmp_path / "out" / "pareto.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    from matplotlib.image import imread

    assert imread(tmp_path / "out" / "pareto.png").ndim == 3
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files


def test_baseline_option_recomputes_delta_m_at_the_selected_epoch(runs, tmp_path):
    ref = {"semseg/mIoU": 34.0, "normals/mean": 18.0}
    rows = rows_by_method(build_report([runs], tmp_path / "out", baseline=ref))
    assert rows["Adapter"].delta_m == pytest.approx(((32 - 34) / 34 * 100 - (19 - 18) / 18 * 100) / 2)
    assert rows["Single task (full FT)"].delta_m == pytest.approx(0.0)  # the reference itself
    assert rows["Adapter"].best_epoch == 1  # selection stays the monitored one


def test_published_rows_are_separate_and_labelled(runs, tmp_path):
    from mtlora.metrics import PUBLISHED_PASCAL_ROWS

    result = build_report([runs], tmp_path / "out", published=True)
    md = result["markdown"]
    measured, published = md.split("## Published reference rows")
    assert "MTLoRA r=64 |" not in measured and "| MTLoRA r=64 | 67.90 |" in published
    with open(tmp_path / "out" / "table.csv") as f:
        table = list(csv.DictReader(f))
    sources = [r["source"] for r in table]
    assert sources.count("measured") == 5
    assert sum(s.startswith("published: ") for s in sources) == len(PUBLISHED_PASCAL_ROWS)
    assert not any(r.pareto for r in result["rows"] if r.method.startswith("MTLoRA"))
    assert (tmp_path / "out" / "pareto.png").read_bytes().startswith(PNG_MAGIC)


def test_trainable_params_rebuilt_from_hparams_when_results_lack_them(tmp_path):
    from mtlora.models.model import MultiTaskModel, parameter_counts
    from mtlora.models.plans import AdapterConfig

    encoder, adapter = tiny_encoder(), AdapterConfig(method="houlsby")
    hparams = {
        "task_channels": {"semseg": 21, "normals": 3},
        "encoder": asdict(encoder),
        "adapter": asdict(adapter),
        "decoder": {"channels": [18, 36, 72, 144]},
    }
    write_run(tmp_path / "runs", "old", [epoch_metrics(30, 20, -1.0)], hparams=hparams)
    row = build_report([tmp_path / "runs"], tmp_path / "out")["rows"][0]
    model = MultiTaskModel({"semseg": 21, "normals": 3}, encoder, adapter)
    assert row.trainable_params == parameter_counts(model)["trainable"] and row.method == "Adapter"


def test_report_cli_writes_the_three_files(runs, tmp_path, capsys):
    out = tmp_path / "reports" / "table"
    run_cli(["report", "--runs", str(runs), "--out", str(out), "--published", "true"])
    assert {p.name for p in out.iterdir()} == {"table.md", "table.csv", "pareto.png"}
    assert "| Adapter |" in capsys.readouterr().out


def test_report_says_on_the_console_why_the_plot_is_empty(tmp_path, capsys):
    write_run(tmp_path / "runs", "no_delta_m", [epoch_metrics(30, 20)], facts("MTLoRA r=16", 4_953_146))
    out = tmp_path / "table"
    run_cli(["report", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"{out / 'pareto.png'} shows no measured run: no run has Δm" in printed
    assert "--baseline" in printed
    run_cli(
        ["report", "--runs", str(tmp_path / "runs"), "--out", str(out), "--baseline", "pascal_context_swin_t"]
    )
    assert "shows no measured run" not in capsys.readouterr().out  # Δm recomputed: the run is plotted


def test_missing_inputs_fail_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["report", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no finished runs"):
        build_report([tmp_path / "empty"], tmp_path / "o")


def test_wandb_source_offline_is_refused_clearly(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SystemExit):
        run_cli(["report", "--wandb_project", "me/mtlora", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "WANDB_MODE=offline" in err and "wandb sync" in err


def test_wandb_runs_are_read_through_the_public_api(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    history = [
        {"_step": 3, "train/loss": 1.0},
        {
            "epoch": 0,
            "val/semseg/mIoU": 20.0,
            "val/normals/mean": 21.0,
            "val/delta_m": -3.0,
            "val/examples/semseg": {"_type": "images"},
        },
        {"epoch": 1, "val/semseg/mIoU": 22.0, "val/normals/mean": 20.0, "val/delta_m": -1.5},
    ]
    run = SimpleNamespace(
        id="abc",
        name="houlsby-1",
        config={"method": "Adapter", "tasks": ["semseg", "normals"], "trainable_params": 123},
        scan_history=lambda: iter(history),
    )
    api = SimpleNamespace(runs=lambda project: [run])
    (row,) = read_wandb_runs("me/proj", None, api_factory=lambda: api)
    assert (row.method, row.best_epoch, row.delta_m, row.trainable_params) == ("Adapter", 1, -1.5, 123)
    assert row.source == "wandb:me/proj/abc"

    def unreachable():
        raise ConnectionError("no route to host")

    with pytest.raises(ReportError, match="needs network access and `wandb login`"):
        read_wandb_runs("me/proj", None, api_factory=unreachable)
