"""Resume: SIGKILL mid-epoch + `--ckpt_path last` equals an uninterrupted run; loader, RNG, atomic writes."""

from __future__ import annotations

import io as _io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtlora.data import SyntheticDataModule
from mtlora.io.checkpoints import CheckpointError
from mtlora.training.checkpointing import (
    AtomicCheckpointIO,
    capture_rng_state,
    restore_rng_state,
)

TESTS = Path(__file__).parent
CONFIG = TESTS / "configs" / "tiny_synthetic.yaml"
# 2 epochs x 4 steps, a checkpoint every 2 steps, one validation batch between the epochs
RESUME_YAML = """
trainer:
  max_epochs: 2
  num_sanity_val_steps: 0
  limit_val_batches: 1
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2}
data:
  init_args: {tasks: [semseg, normals], train_size: 8, val_size: 2, batch_size: 2}
"""
KILL_YAML = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2}
    - class_path: kill_at_step.KillAtStep
      init_args: {step: 7}
"""


def start_fit(tmp_path: Path, save_dir: str, log_name: str, *extra: str) -> subprocess.Popen:
    """``mtlora fit`` in a subprocess (one thread each, so every run computes in the same order)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    args = [
        sys.executable,
        "-m",
        "mtlora.cli",
        "fit",
        "--config",
        str(CONFIG),
        "-c",
        str(tmp_path / "resume.yaml"),
        *extra,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / save_dir),
    ]
    with open(tmp_path / log_name, "w") as log:
        return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    return proc.wait(timeout=300), log.read_text()[-3000:]


def test_sigkill_mid_epoch_then_resume_last_equals_uninterrupted(tmp_path):
    (tmp_path / "resume.yaml").write_text(RESUME_YAML)
    (tmp_path / "kill.yaml").write_text(KILL_YAML)
    reference = start_fit(tmp_path, "straight", "straight.log")
    killed = start_fit(tmp_path, "killed", "killed.log", "-c", str(tmp_path / "kill.yaml"))
    rc, log = finish(killed, tmp_path / "killed.log")
    assert rc == -signal.SIGKILL, log

    last = tmp_path / "killed/lightning_logs/version_0/checkpoints/last.ckpt"
    mid = torch.load(last, weights_only=True)  # only tensors and primitive values were pickled
    assert mid["global_step"] == 6 and mid["epoch"] == 1  # step 6 = 2 of the 4 batches of epoch 1
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert mid["SyntheticDataModule"] == {"train_loader": {"epoch": 1, "batches": 2}}
    assert set(mid["lr_schedulers"][0]["lr_lambdas"]) == {None}  # the LambdaLR lambdas are not pickled
    assert set(mid["mtlora"]["rng"]) >= {"torch", "numpy", "python"}
    assert not list(last.parent.glob(".*.tmp"))

    resumed = start_fit(tmp_path, "killed", "resumed.log", "--ckpt_path", "last")
    rc, log = finish(resumed, tmp_path / "resumed.log")
    assert rc == 0, log
    assert f"Restored all states from the checkpoint at {last}" in log
    assert not (tmp_path / "killed/lightning_logs/version_1").exists()  # the run continues in its folder
    rc, log = finish(reference, tmp_path / "straight.log")
    assert rc == 0, log

    a = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert (b["global_step"], b["epoch"]) == (a["global_step"], a["epoch"]) == (8, 1)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for index, state in a["optimizer_states"][0]["state"].items():
        other = b["optimizer_states"][0]["state"][index]
        assert all(torch.equal(state[k], other[k]) for k in ("step", "exp_avg", "exp_avg_sq")), index
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 8


def loader(**kwargs):
    dm = SyntheticDataModule(
        tasks=["semseg", "normals"],
        train_size=12,
        val_size=2,
        batch_size=2,
        img_size=32,
        num_workers=0,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def test_loader_position_restores_exact_batches_and_augmentations():
    dm = loader()
    full = list(dm.train_dataloader())
    first = dm.train_dataloader()
    it = iter(first)
    for _ in range(2):
        next(it)
    assert first.state_dict() == {"epoch": 0, "batches": 2}
    state = dm.state_dict()

    dm2 = loader()
    dm2.load_state_dict(state)  # how Lightning restores it, before it builds the loader
    resumed = dm2.train_dataloader()
    rest = list(resumed)
    assert len(resumed) == len(full) == 6 and len(rest) == 4  # len() stays the full epoch
    for a, b in zip(full[2:], rest):
        assert a["meta"]["id"] == b["meta"]["id"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["normals"], b["normals"])
    assert resumed.state_dict() == {"epoch": 0, "batches": 6}

    other_epoch = loader().train_dataloader()
    other_epoch.load_state_dict({"epoch": 3, "batches": 2})  # a position for another epoch is ignored
    other_epoch.sampler.set_epoch(1)
    epoch1 = list(other_epoch)
    assert len(epoch1) == 6 and [b["meta"]["id"] for b in epoch1] != [b["meta"]["id"] for b in full]


def test_augmentation_depends_on_sample_not_on_loading_order():
    """Per-sample seeds: the same sample at the same epoch is augmented identically wherever it is drawn."""
    dm = loader(seed=5)
    batches = list(dm.train_dataloader())
    by_id = {i: img for b in batches for i, img in zip(b["meta"]["id"], b["image"])}
    sampler = dm.train_dataloader().sampler
    index, seed = next(iter(sampler))
    sample = dm.datasets["train"][(index, seed)]
    assert torch.equal(sample["image"], by_id[sample["meta"]["id"]])


def test_rng_state_round_trip_is_weights_only(tmp_path):
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(loaded)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]


class FailingPayload:
    """Raises while being pickled: a save that dies half-way through writing."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


_REAL_SAVE = torch.save


def _half_written_then_fail(obj, f, *args, **kwargs):
    """``torch.save`` that writes half of the file and then dies (a full disk, a kill)."""
    buffer = _io.BytesIO()
    _REAL_SAVE(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise RuntimeError("disk full (simulated, half written)")


@pytest.mark.parametrize(
    "io_class,failure",
    [(AtomicCheckpointIO, "pickling"), (AtomicCheckpointIO, "half_written"), (TorchCheckpointIO, "pickling")],
)
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, io_class, failure):
    """Lightning's writer is pinned too: it serialises to memory first, then moves a temporary file."""
    io = io_class()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    payload = {"state_dict": {"w": torch.zeros(300_000)}, "global_step": 2}
    if failure == "pickling":
        payload["extra"] = FailingPayload()
    else:
        monkeypatch.setattr("mtlora.training.checkpointing.torch.save", _half_written_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint(payload, path)
    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_atomic_io_writes_next_to_the_target(tmp_path, monkeypatch):
    """The temporary file lives in the target folder, so the final rename never becomes a copy."""
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 0}, path)
    ((src, dst),) = renames
    assert src.parent == dst.parent == path.parent and dst == path
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_io_loads_weights_only_and_names_bad_files(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path}.*truncated or corrupt"):
        io.load_checkpoint(path)


def test_epoch_end_resume_with_max_steps_warns(tmp_path):
    """Lightning 2.6 skips the next epoch in this case (see warn_epoch_end_resume_with_max_steps): say so."""
    from mtlora.cli import run_cli

    quick = [
        "--config",
        str(CONFIG),
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "1",
        "--data.init_args.train_size",
        "8",
        "--data.init_args.val_size",
        "2",
    ]
    run_cli(["fit", *quick, "--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    ckpt = next(tmp_path.rglob("epoch=0-step=2.ckpt"))
    with pytest.warns(UserWarning, match="from a checkpoint written at the end of an epoch"):
        run_cli(
            [
                "fit",
                *quick,
                "--trainer.max_steps",
                "3",
                "--trainer.max_epochs",
                "3",
                "--ckpt_path",
                str(ckpt),
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
            ]
        )
