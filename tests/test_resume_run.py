"""A run always has a recent checkpoint, `--ckpt_path last` finds it, and a resumed run stays one run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_resume import CONFIG, finish, start_fit

from mtlora.cli import run_cli
from mtlora.io.checkpoints import CheckpointError
from mtlora.training.resume import (
    CONFIG_KEY,
    ResumeCheckpoint,
    config_drift,
    find_resume_checkpoint,
    remove_orphaned_temp_files,
    warn_config_drift,
)

# validation only after epoch 1 (as the paper recipe's every-5-epochs), a monitored ModelCheckpoint
# that therefore writes nothing in epoch 0, and a resume checkpoint every 2 steps
RUN_YAML = """
trainer:
  max_epochs: 2
  num_sanity_val_steps: 0
  limit_val_batches: 1
  check_val_every_n_epoch: 2
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/loss, save_last: true, filename: "best-{epoch}"}
    - class_path: mtlora.training.resume.ResumeCheckpoint
      init_args: {every_n_steps: 2}
data:
  init_args: {tasks: [semseg, normals], train_size: 8, val_size: 2, batch_size: 2}
"""
KILL_YAML = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/loss, save_last: true, filename: "best-{epoch}"}
    - class_path: mtlora.training.resume.ResumeCheckpoint
      init_args: {every_n_steps: 2}
    - class_path: kill_at_step.KillAtStep
      init_args: {step: 3}
"""


def test_kill_in_epoch_0_before_any_validation_then_resume_last(tmp_path):
    (tmp_path / "resume.yaml").write_text(RUN_YAML)
    (tmp_path / "kill.yaml").write_text(KILL_YAML)
    reference = start_fit(tmp_path, "straight", "straight.log")
    killed = start_fit(tmp_path, "killed", "killed.log", "-c", str(tmp_path / "kill.yaml"))
    rc, log = finish(killed, tmp_path / "killed.log")
    assert rc == -signal.SIGKILL, log

    run = tmp_path / "killed/lightning_logs/version_0"
    last = run / "checkpoints/last.ckpt"
    mid = torch.load(last, weights_only=True)
    assert (mid["global_step"], mid["epoch"]) == (2, 0)  # written although no metric was monitored yet
    assert mid[CONFIG_KEY]["data.init_args.batch_size"] == 2  # the run's config travels with it
    orphan = last.parent / ".last.ckpt.x1y2z3.tmp"  # what a kill during a save leaves
    orphan.write_bytes(b"half a checkpoint")

    resumed = start_fit(tmp_path, "killed", "resumed.log", "--ckpt_path", "last")
    rc, log = finish(resumed, tmp_path / "resumed.log")
    assert rc == 0, log
    assert f"Restored all states from the checkpoint at {last}" in log
    assert not orphan.exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # one run, one folder
    assert (run / "config.yaml").exists() and (run / "config_resumed.yaml").exists()
    steps = [line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[:2] == ["0", "1"] and "7" in steps  # the killed run's rows are kept, the rest appended
    rc, log = finish(reference, tmp_path / "straight.log")
    assert rc == 0, log

    a = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert (b["global_step"], b["epoch"]) == (a["global_step"], a["epoch"]) == (8, 1)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for index, state in a["optimizer_states"][0]["state"].items():
        other = b["optimizer_states"][0]["state"][index]
        assert all(torch.equal(state[k], other[k]) for k in ("exp_avg", "exp_avg_sq")), index


def _save(path: Path, step: int, mtime_ns: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step}, path)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_newest_complete_checkpoint_of_last_and_top_k(tmp_path):
    _save(tmp_path / "version_0/checkpoints/last.ckpt", 900, 10**18)  # an older, longer run
    best = _save(tmp_path / "version_1/checkpoints/best-epoch=3.ckpt", 40, 3 * 10**18)
    _save(tmp_path / "version_1/checkpoints/last.ckpt", 30, 2 * 10**18)
    (tmp_path / "version_1/checkpoints/.last.ckpt.abc.tmp").write_bytes(b"x" * 100)  # never a candidate
    folders = sorted(tmp_path.glob("*/checkpoints"))
    assert find_resume_checkpoint(folders) == best

    truncated = tmp_path / "version_1/checkpoints/best-epoch=4.ckpt"
    truncated.write_bytes(best.read_bytes()[:200])
    os.utime(truncated, ns=(4 * 10**18, 4 * 10**18))
    with pytest.warns(UserWarning, match="skipped truncated or corrupt .*best-epoch=4"):
        assert find_resume_checkpoint(folders) == best
    assert find_resume_checkpoint([tmp_path / "absent"]) is None


def test_unreadable_checkpoints_never_mean_a_fresh_start(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match="every checkpoint found is truncated or corrupt"):
        find_resume_checkpoint([tmp_path])


def test_orphaned_temp_files_are_removed_but_not_a_write_in_progress(tmp_path):
    old, new = tmp_path / ".last.ckpt.a.tmp", tmp_path / ".best.ckpt.b.tmp"
    for path in (old, new, tmp_path / "last.ckpt"):
        path.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert remove_orphaned_temp_files(tmp_path, older_than=1000) == [old]
    assert new.exists() and (tmp_path / "last.ckpt").exists()


def test_resume_checkpoint_rejects_bad_intervals():
    with pytest.raises(ValueError, match="every_minutes must be > 0"):
        ResumeCheckpoint(every_minutes=0)
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        ResumeCheckpoint(every_n_steps=0)


QUICK = [
    "--config",
    str(CONFIG),
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.limit_val_batches",
    "1",
    "--data.init_args.tasks",
    "[semseg, normals]",
    "--data.init_args.train_size",
    "4",
    "--data.init_args.val_size",
    "2",
    "--data.init_args.batch_size",
    "2",
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.monitor=val/loss",
    "--trainer.callbacks.save_last=true",
]


def _fit(root: Path, *extra: str):
    return run_cli(["fit", *QUICK, "--trainer.logger.init_args.save_dir", str(root), *extra])


def _best(cli) -> ModelCheckpoint:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint))


def test_no_checkpoint_says_so_loudly_and_starts(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint under .*TRAINING STARTS FROM SCRATCH"):
        cli = _fit(tmp_path, "--ckpt_path", "last")
    assert cli.trainer.global_step == 2 and cli.trainer.ckpt_path is None


def test_resume_keeps_best_model_tracking_and_warns_about_changed_options(tmp_path):
    first = _fit(tmp_path)
    before = _best(first)
    score, path = float(before.best_model_score), before.best_model_path
    run = Path(first.trainer.log_dir)

    with pytest.warns(
        UserWarning, match=r"(?s)learning-rate scaling.*data.init_args.batch_size: checkpoint 2, now 1"
    ):
        resumed = _fit(tmp_path, "--ckpt_path", "last", "--data.init_args.batch_size", "1")
    after = _best(resumed)
    assert Path(resumed.trainer.log_dir) == run
    assert float(after.best_model_score) == score and after.best_model_path == path
    assert resumed.trainer.global_step == first.trainer.global_step  # max_epochs 1 was already reached

    older = run / "checkpoints/older.ckpt"  # not the run's newest checkpoint: a new run starts from it
    older.write_bytes((run / "checkpoints/last.ckpt").read_bytes())
    os.utime(older, ns=(1, 1))
    branched = _fit(tmp_path, "--ckpt_path", str(older))
    assert Path(branched.trainer.log_dir) == run.parent / "version_1"


def test_evaluation_goes_into_the_run_it_evaluates_and_report_sees_one_run(tmp_path):
    from mtlora.tools.report.runs import find_csv_runs, read_csv_run

    first = _fit(tmp_path / "runs")
    run = Path(first.trainer.log_dir)
    ckpt = run / "checkpoints/last.ckpt"
    other = tmp_path / "elsewhere"
    cli = run_cli(
        ["test", *QUICK, "--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", str(other)]
    )
    writer = next(cb for cb in cli.trainer.callbacks if hasattr(cb, "results_path"))
    assert writer.results_path == run / "test-last" / "test_results.json"
    assert json.loads(writer.results_path.read_text())["ckpt_path"] == str(ckpt)
    assert not other.exists() and (run / "config.yaml").exists()

    assert find_csv_runs([tmp_path / "runs"]) == [run]  # the evaluation folder is part of the run
    assert read_csv_run(run, run, None).name == "version_0"  # a run folder given directly keeps its name


def test_config_drift_lists_changed_options_and_ignores_logging():
    stored = {"data.init_args.batch_size": 32, "trainer.max_epochs": 300, "model.lr": 1e-3}
    now = {**stored, "data.init_args.batch_size": 16, "trainer.logger.init_args.save_dir": "elsewhere"}
    assert config_drift(now, stored) == ["data.init_args.batch_size: checkpoint 32, now 16"]
    # a checkpoint written without the CLI's config: its model hyper-parameters are compared
    checkpoint = {"hyper_parameters": {"lr": 1e-3, "batch_size": 32, "_instantiator": "x"}}
    with pytest.warns(UserWarning, match=r"(?s)learning-rate scaling.*batch_size: checkpoint 32, now 8"):
        warn_config_drift("x.ckpt", {}, checkpoint, {"lr": 1e-3, "batch_size": 8})


@pytest.mark.parametrize("checkpointing", [True, False])
def test_every_fit_gets_a_resume_checkpoint_unless_checkpointing_is_off(tmp_path, checkpointing):
    args = [*QUICK[:-2], "--trainer.enable_checkpointing", str(checkpointing).lower()]
    args = [a for a in args if "ModelCheckpoint" not in a]
    cli = run_cli(["fit", *args, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    resume = [cb for cb in cli.trainer.callbacks if isinstance(cb, ResumeCheckpoint)]
    last = Path(cli.trainer.log_dir) / "checkpoints/last.ckpt"
    if checkpointing:  # Lightning's default ModelCheckpoint keeps no last.ckpt: the epoch-end save does
        assert [r.every_minutes for r in resume] == [5.0] and last.exists()
        assert torch.load(last, weights_only=True)["global_step"] == 2
    else:
        assert not resume and not last.parent.exists()
