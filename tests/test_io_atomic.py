"""One atomic writer for every output: umask permissions, a full disk, interrupted writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from mtlora.io.atomic import DiskFullError, write_atomic, write_json_atomic, write_text_atomic

from conftest import PASCAL_CHANNELS, tiny_encoder


@pytest.fixture(scope="module")
def tiny_model():
    from mtlora.models.model import MultiTaskModel

    return MultiTaskModel(PASCAL_CHANNELS, tiny_encoder())


def _checkpoint(out: Path, model) -> list[Path]:
    from mtlora.training.checkpointing import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, out / "last.ckpt")
    return [out / "last.ckpt"]


def _results_json(out: Path, model) -> list[Path]:  # val_results.json, summary/bench --json_out
    return [write_json_atomic(out / "val_results.json", {"metrics": {"val/loss": 1.0}})]


def _report(out: Path, model) -> list[Path]:
    from mtlora.tools.report.render import plot

    plot([], [], out / "pareto.png")
    return [write_text_atomic(out / "table.md", "| a |\n"), out / "pareto.png"]


def _adapters(out: Path, model) -> list[Path]:
    from mtlora.io.adapters import save_adapters

    save_adapters(model, out / "adapters.safetensors")
    return [out / "adapters.safetensors"]


def _export(out: Path, model) -> list[Path]:
    from mtlora.io.export import export_model

    export_model(model, out, program=False)
    return [out / "model.safetensors", out / "config.json"]


def _similarity(out: Path, model) -> list[Path]:
    from mtlora.tools.similarity import SimilarityResult, plot_heatmaps

    result = SimilarityResult(["semseg", "sal"], [torch.eye(2)], batches=1, seconds=0.1)
    plot_heatmaps(result, str(out / "similarity.png"))
    return [out / "similarity.png"]


def _prediction_panel(out: Path, model) -> list[Path]:
    from mtlora.visualize import save_panel

    save_panel(str(out / "panel.png"), torch.rand(3, 16, 16), {"sal": torch.rand(1, 16, 16)})
    return [out / "panel.png"]


WRITERS = [_checkpoint, _results_json, _report, _adapters, _export, _similarity, _prediction_panel]


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o027, 0o640)])
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__.strip("_"))
def test_outputs_get_the_permissions_of_a_plain_open(tmp_path, tiny_model, writer, umask, expected):
    old = os.umask(umask)
    try:
        paths = writer(tmp_path, tiny_model)
    finally:
        os.umask(old)
    for path in paths:
        assert oct(path.stat().st_mode & 0o777) == oct(expected), path.name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "private.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_json_atomic(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o600 and '"a": 1' in path.read_text()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _save_json(path: Path, model) -> None:
    write_json_atomic(path, {"new": 1})


def _save_checkpoint(path: Path, model) -> None:
    from mtlora.io.serialization import atomic_torch_save

    atomic_torch_save({"state_dict": {}}, path)


def _save_adapters(path: Path, model) -> None:
    from mtlora.io.adapters import save_adapters

    save_adapters(model, path)


@pytest.mark.parametrize(
    "target,patch,save",
    [
        ("results.json", "pathlib.Path.write_text", _save_json),
        ("last.ckpt", "torch.save", _save_checkpoint),
        ("a.safetensors", "safetensors.torch.save_file", _save_adapters),
    ],
    ids=["json", "checkpoint", "adapters"],
)
def test_disk_full_names_the_file_and_keeps_the_previous_one(
    tmp_path, monkeypatch, tiny_model, target, patch, save
):
    path = tmp_path / target
    path.write_bytes(b"previous content")
    monkeypatch.setattr(patch, _no_space)
    with pytest.raises(DiskFullError, match=rf"{path}: the disk is full") as err:
        save(path, tiny_model)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]  # temporary file removed


def test_interrupted_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "out" / "table.csv"

    def interrupted(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted)
    assert list(path.parent.iterdir()) == []


def test_atomic_module_imports_neither_lightning_nor_torch():
    import subprocess
    import sys

    code = "import sys, mtlora.io; print(sorted(m for m in ('lightning', 'torch') if m in sys.modules))"
    root = Path(__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(root)}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
