"""Non-finite losses/gradients: the step is skipped on the device, reported by task, too many stop the run."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mtlora.data import SyntheticDataModule
from mtlora.io.checkpoints import CheckpointError
from mtlora.training.commands import MTLoRATrainer
from mtlora.training.module import MultiTaskModule
from mtlora.training.nonfinite import NonFiniteGuard, NonFiniteStepsError

from conftest import tiny_encoder

TASKS = ["semseg", "sal", "normals"]


class Snapshots(Callback):
    """Trainable parameters before and after every training batch."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _params(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = self._params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = self._params(pl_module)


class Buffers(Callback):
    """Buffers (BatchNorm statistics) before and after every training batch; NaN images on ``nan_steps``."""

    def __init__(self, nan_steps: set[int] = frozenset()) -> None:
        self.nan_steps = nan_steps
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = {n: b.clone() for n, b in pl_module.named_buffers()}
        if trainer.global_step in self.nan_steps:
            batch["image"][0, :, :8, :8] = float("nan")  # a non-finite forward: BatchNorm sees NaN

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = {n: b.clone() for n, b in pl_module.named_buffers()}


def run(tmp_path, nan_steps: set[int], max_steps: int, max_nonfinite_steps: int = 10):
    """Fit a tiny model for ``max_steps`` steps, with a NaN added to the ``sal`` loss on ``nan_steps``."""
    torch.manual_seed(0)
    dm = SyntheticDataModule(tasks=TASKS, train_size=8, val_size=2, batch_size=2, img_size=64, num_workers=0)
    module = MultiTaskModule(
        dm.task_channels,
        encoder=tiny_encoder(),
        delta_m_baseline=None,
        lr_reference_batch=None,
        lr=1e-3,
        warmup_epochs=0,
        batch_size=2,
        max_nonfinite_steps=max_nonfinite_steps,
    )
    compute = module.criterion.forward

    def poisoned(outputs, batch):
        losses = compute(outputs, batch)
        if module.trainer.global_step in nan_steps:
            losses["sal"] = losses["sal"] + float("nan")  # finite gradients, non-finite loss
        return losses

    module.criterion.forward = poisoned
    snapshots = Snapshots()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer = Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[snapshots, checkpoint],
        default_root_dir=tmp_path,
    )
    return module, dm, trainer, snapshots


def test_nan_task_loss_skips_the_step_and_names_the_task(tmp_path):
    module, dm, trainer, snaps = run(tmp_path, nan_steps={1}, max_steps=3)
    with pytest.warns(
        UserWarning, match=r"non-finite values up to step 2: sal: 1 steps with a non-finite loss"
    ):
        trainer.fit(module, dm)
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"]  # device-side skipping, no host sync per step
    for name, value in snaps.before[1].items():
        assert torch.equal(value, snaps.after[1][name]), name  # the NaN step changed nothing
    assert any(not torch.equal(v, snaps.after[0][k]) for k, v in snaps.before[0].items())  # others did train
    assert any(not torch.equal(v, snaps.after[2][k]) for k, v in snaps.before[2].items())
    steps = {float(s["step"]) for s in optimizer.state.values()}
    assert steps == {2.0}  # 3 optimizer calls, the skipped one rolled back
    assert module.nonfinite.state_dict()["counts"] == [0, 1, 0, 0, 0, 1]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_repeated_faults_stop_the_run_and_keep_a_finite_checkpoint(tmp_path):
    module, dm, trainer, _ = run(tmp_path, nan_steps=set(range(2, 100)), max_steps=10, max_nonfinite_steps=2)
    with pytest.warns(UserWarning, match="sal"), pytest.raises(NonFiniteStepsError) as err:
        trainer.fit(module, dm)
    message = str(err.value)
    assert "training stopped at step 5" in message and "3 optimizer steps were skipped" in message
    assert "max_nonfinite_steps=2" in message and "sal: 3 steps with a non-finite loss" in message
    last = tmp_path / "ckpt" / "last.ckpt"
    assert f"the last checkpoint ({last}) is kept" in message
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 5 and checkpoint["mtlora"]["nonfinite"]["counts"][-1] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    loaded = MultiTaskModule.load_from_checkpoint(last, weights_only=True)
    assert loaded.nonfinite.max_steps == 2


def guarded_optimizer(fused: bool):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 2))]
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.05, fused=fused or None)
    for p in params:
        p.grad = torch.ones_like(p)
    return params, optimizer


@pytest.mark.parametrize("mode", ["found_inf", "drop_grads"])
def test_non_finite_gradient_with_finite_losses_is_skipped(mode):
    params, optimizer = guarded_optimizer(fused=mode == "found_inf")
    guard = NonFiniteGuard(["semseg", "depth"], max_steps=5)
    guard.record_losses({"semseg": torch.tensor(1.0), "depth": torch.tensor(2.0)}, torch.tensor(3.0))
    params[1].grad[0, 1] = math.inf
    before = [p.detach().clone() for p in params]
    guard.before_optimizer_step(optimizer, mode)
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert guard.counts.tolist() == [0, 0, 0, 1, 1]
    assert "1 steps with non-finite gradients or buffers but finite losses" in guard.describe(
        guard.counts.tolist()
    )


def test_scaler_mode_only_counts_and_combined_loss_is_attributed():
    params, optimizer = guarded_optimizer(fused=True)
    guard = NonFiniteGuard(["semseg", "depth"], max_steps=0)
    guard.record_losses({"semseg": torch.tensor(1.0), "depth": torch.tensor(2.0)}, torch.tensor(math.inf))
    guard.before_optimizer_step(optimizer, "count_only")  # a GradScaler owns found_inf under 16-mixed
    assert getattr(optimizer, "found_inf", None) is None
    assert guard.counts.tolist() == [0, 0, 1, 0, 0]
    with pytest.warns(
        UserWarning, match=r"non-finite combined loss but finite task losses \(loss weighting\)"
    ):
        guard.check(step=4, last_checkpoint=None)  # no step skipped: under the limit of 0


def test_guard_state_round_trip():
    guard = NonFiniteGuard(["semseg", "depth"], max_steps=3)
    guard.record_losses(
        {"semseg": torch.tensor(math.nan), "depth": torch.tensor(2.0)}, torch.tensor(math.nan)
    )
    state = guard.state_dict()
    other = NonFiniteGuard(["semseg", "depth"], max_steps=3)
    other.load_state_dict(state)
    other.record_losses(
        {"semseg": torch.tensor(1.0), "depth": torch.tensor(math.inf)}, torch.tensor(math.inf)
    )
    assert other.counts.tolist() == [1, 1, 0, 0, 0]
    NonFiniteGuard(["sal"], 3).load_state_dict(state)  # another task list: ignored, not an error
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 0"):
        NonFiniteGuard(["sal"], -1)


def test_non_finite_forward_changes_no_buffer_and_no_checkpoint(tmp_path):
    module, dm, trainer, _ = run(tmp_path, nan_steps=set(), max_steps=4, max_nonfinite_steps=1)
    buffers = Buffers(nan_steps={1, 2, 3})
    trainer.callbacks.append(buffers)
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(NonFiniteStepsError) as err:
        trainer.fit(module, dm)
    assert "training stopped at step 3" in str(err.value) and "semseg" in str(err.value)
    running = [n for n in buffers.before[0] if n.endswith("running_var")]
    assert running  # the heads have BatchNorm layers
    assert any(not torch.equal(buffers.before[0][n], buffers.after[0][n]) for n in running)  # step 0 trained
    for step in (1, 2):  # NaN forwards: every buffer as before the step
        for name, value in buffers.before[step].items():
            assert torch.equal(value, buffers.after[step][name]), (step, name)
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_non_finite_state_is_never_written_and_not_predicted_from(tmp_path):
    module, dm, trainer, _ = run(tmp_path, nan_steps=set(), max_steps=3)

    class Diverge(Callback):
        """A weight overflows in an otherwise finite step (the guard only sees the next forward)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                with torch.no_grad():
                    pl_module.model.decoder.heads["sal"].last_layer[-1].weight.fill_(float("inf"))

    trainer.callbacks.insert(0, Diverge())
    with pytest.raises(NonFiniteStepsError) as err:
        trainer.fit(module, dm)
    message = str(err.value)
    assert "no checkpoint was written and the earlier ones are kept" in message
    assert "model.decoder.heads.sal.last_layer" in message and "tasks affected: sal" in message
    last = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 1  # the step-2 save was refused; the finite one is kept

    # a non-finite checkpoint from elsewhere: predict refuses it, validate warns
    checkpoint["state_dict"]["model.decoder.heads.sal.last_layer.1.bias"][0] = float("nan")
    bad = tmp_path / "bad.ckpt"
    torch.save(checkpoint, bad)
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(
        CheckpointError, match=rf"{bad}: 1 tensors hold NaN .*tasks affected: sal.*earlier checkpoint"
    ):
        Trainer(**quiet, limit_predict_batches=1).predict(module, dm, ckpt_path=bad)
    with pytest.warns(UserWarning, match=r"1 tensors hold NaN or infinite values .* metrics will be NaN"):
        Trainer(**quiet, limit_val_batches=1).validate(module, dm, ckpt_path=bad)
    with (
        pytest.warns(UserWarning, match="diverged"),
        pytest.raises(CheckpointError, match="was not written: 1 tensors hold NaN.*export an earlier"),
    ):
        MTLoRATrainer(**quiet).export_adapters(module, str(bad), out=str(tmp_path / "a.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()
    from mtlora.io.export import export_model

    with pytest.warns(UserWarning, match="diverged"):
        diverged = MultiTaskModule.load_from_checkpoint(bad, weights_only=True).model
    with pytest.raises(CheckpointError, match="was not written: 1 tensors hold NaN"):
        export_model(diverged, tmp_path / "export", program=False)
    assert not (tmp_path / "export").exists()


def test_nonfinite_tensor_names_is_exact():
    from mtlora.io.loading import nonfinite_tensor_names

    state = {
        "huge": torch.full((4,), 1e30),  # finite, though its norm overflows float32
        "nan": torch.tensor([0.0, math.nan]),
        "inf": torch.tensor([-math.inf]),
        "steps": torch.tensor(3),  # integer tensors are never non-finite
        "fine": torch.randn(3, 3),
    }
    assert nonfinite_tensor_names(state) == ["nan", "inf"]
