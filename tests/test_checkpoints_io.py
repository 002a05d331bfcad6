"""safe_torch_load: weights-only by default, clear errors for missing, empty, truncated and foreign files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import safetensors.torch
import torch

from mtlora.io.checkpoints import (
    CheckpointError,
    UnsafeCheckpointError,
    extract_state_dict,
    safe_torch_load,
)


class Payload:
    """An arbitrary (harmless) object: only loadable with allow_unsafe=True."""

    def __init__(self, value: int) -> None:
        self.value = value


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(8, 4, generator=g), "layer.bias": torch.randn(8, generator=g)}


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_round_trip_with_metadata(tmp_path, zipfile_format):
    path = tmp_path / "ckpt.pth"
    obj = {
        "model": weights(),
        "epoch": 7,
        "max_accuracy": np.float64(0.25),
        "tags": {"a", "b"},
        "raw": b"\x00\x01",
        "dtype": torch.float16,
    }
    torch.save(obj, path, _use_new_zipfile_serialization=zipfile_format)
    loaded = safe_torch_load(path)
    assert loaded["epoch"] == 7 and loaded["max_accuracy"] == 0.25 and loaded["tags"] == {"a", "b"}
    assert loaded["raw"] == b"\x00\x01" and loaded["dtype"] is torch.float16
    for k, v in weights().items():
        assert torch.equal(loaded["model"][k], v)
    assert extract_state_dict(loaded, str(path)).keys() == weights().keys()


def test_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(weights(), str(path))
    loaded = safe_torch_load(path)
    assert all(torch.equal(loaded[k], v) for k, v in weights().items())
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CheckpointError, match=rf"{path}.*not a readable safetensors file"):
        safe_torch_load(path)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_unsafe_objects_need_opt_in(tmp_path, zipfile_format):
    path = tmp_path / "pickled.pth"
    torch.save({"model": weights(), "extra": Payload(3)}, path, _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(UnsafeCheckpointError) as err:
        safe_torch_load(path)
    assert f"{Payload.__module__}.Payload" in str(err.value) and str(path) in str(err.value)
    assert "allow_unsafe=True" in str(err.value)
    with pytest.warns(UserWarning, match="can execute code"):
        loaded = safe_torch_load(path, allow_unsafe=True)
    assert loaded["extra"].value == 3


def test_missing_empty_and_directory(tmp_path):
    missing = tmp_path / "absent" / "swin_tiny_patch4_window7_224.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        safe_torch_load(missing)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{empty} is empty"):
        safe_torch_load(empty)
    with pytest.raises(CheckpointError, match="is not a file"):
        safe_torch_load(tmp_path)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_truncated(tmp_path, zipfile_format):
    path = tmp_path / "truncated.pth"
    torch.save({"model": weights()}, path, _use_new_zipfile_serialization=zipfile_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert not isinstance(err.value, UnsafeCheckpointError)


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".safetensors"])
def test_not_a_checkpoint(tmp_path, suffix):
    """The content decides, not the name: a foreign file gets the same named error from every loader."""
    import re

    from mtlora.io.adapters import read_adapters
    from mtlora.training.checkpointing import load_lightning_checkpoint
    from mtlora.training.module import MultiTaskModule

    garbage = tmp_path / f"random{suffix}"
    garbage.write_bytes(b"GARBAGE!" + os.urandom(256))
    brace = tmp_path / f"brace{suffix}"  # a "{" where a safetensors header starts, by chance
    brace.write_bytes(b"GARBAGE!{" + os.urandom(255))
    text = tmp_path / f"notes{suffix}"
    text.write_text("model weights go here\n")
    page = tmp_path / f"download{suffix}"  # what a proxy or an expired link returns instead of the file
    page.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    loaders = [safe_torch_load, load_lightning_checkpoint, read_adapters]
    loaders.append(lambda p: MultiTaskModule.load_from_checkpoint(p, weights_only=True))
    for path in (garbage, brace, text, page):
        head = re.escape(repr(path.read_bytes()[:8]))
        for load in loaders:
            with pytest.raises(
                CheckpointError,
                match=rf"{re.escape(str(path))} \(\d+ bytes\) is not .*: it holds a file starting with bytes {head}\. "
                r"Truncated, corrupt, renamed or another format\?",
            ):
                load(path)

    # real checkpoints under the other suffix: loaded by content, or named for what they are
    torch_file = tmp_path / f"torch{suffix}"
    torch.save(weights(), torch_file)
    assert all(torch.equal(safe_torch_load(torch_file)[k], v) for k, v in weights().items())
    with pytest.raises(
        CheckpointError, match=r"not an mtlora adapter file \(safetensors\): it holds a torch checkpoint"
    ):
        read_adapters(torch_file)
    tensors = tmp_path / f"tensors{suffix}"
    safetensors.torch.save_file(weights(), str(tensors))
    with pytest.raises(CheckpointError, match=r"is not a Lightning checkpoint: it holds a safetensors file"):
        load_lightning_checkpoint(tensors)


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")
def test_foreign_zip_and_torchscript(tmp_path):
    import zipfile

    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"zip archive but not a torch checkpoint"):
        safe_torch_load(path)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        safe_torch_load(scripted)


def test_extract_state_dict_errors():
    with pytest.raises(CheckpointError, match=r"src\.pth: no state dict found.*'epoch', 'optimizer'"):
        extract_state_dict({"epoch": 1, "optimizer": {}}, "src.pth")
    with pytest.raises(CheckpointError, match="got list"):
        extract_state_dict([1, 2], "src.pth")
    nested = {"state_dict": weights(), "epoch": 1}
    assert extract_state_dict(nested, "x").keys() == weights().keys()


def test_checked_file_sniffs_content_not_name(tmp_path):
    from mtlora.io import checked_file

    torch_file = tmp_path / "weights.safetensors"  # a torch file under a safetensors name
    torch.save(weights(), torch_file)
    assert checked_file(torch_file, ("zip",), "a torch checkpoint") == (torch_file, "zip")
    with pytest.raises(CheckpointError, match="is not an adapter file: it holds a torch checkpoint"):
        checked_file(torch_file, ("safetensors",), "an adapter file")
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(torch_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checked_file(truncated, ("zip",), "a torch checkpoint")


def test_weight_file_package_imports_no_lightning():
    import subprocess
    import sys

    modules = "atomic serialization config adapters export checkpoints backbone loading official_mtlora"
    code = (
        "import importlib, sys\n"
        f"for m in {modules.split()!r}: importlib.import_module('mtlora.io.' + m)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
