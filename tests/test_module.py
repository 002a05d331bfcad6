"""LightningModule recipe pieces: LR schedule, LR scaling by global batch, weight-decay groups."""

import math
from unittest.mock import PropertyMock, patch

import pytest
import torch
from lightning.pytorch import Trainer

from mtlora.models.plans import AdapterConfig
from mtlora.training.module import MultiTaskModule
from mtlora.training.optim import warmup_cosine

from conftest import PASCAL_CHANNELS, tiny_encoder


def test_warmup_cosine_shape():
    kw = dict(warmup_steps=10, total_steps=110, warmup_lr=1e-6, peak_lr=1e-3, min_lr=1e-5)
    assert warmup_cosine(0, **kw) == pytest.approx(1e-6)
    assert warmup_cosine(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert warmup_cosine(10, **kw) == pytest.approx(1e-3)
    assert warmup_cosine(60, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine(110, **kw) == pytest.approx(1e-5)
    assert warmup_cosine(500, **kw) == pytest.approx(1e-5)


def make_module(**kw):
    return MultiTaskModule(
        PASCAL_CHANNELS,
        tiny_encoder(),
        AdapterConfig(shared_rank=4, task_rank=2),
        delta_m_baseline=None,
        **kw,
    )


def test_lr_scaled_by_global_batch_and_param_groups():
    module = make_module(batch_size=32, lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, warmup_epochs=1)
    trainer = Trainer(
        max_epochs=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        accumulate_grad_batches=2,
        enable_progress_bar=False,
    )
    trainer.strategy.connect(module)
    module.trainer = trainer
    assert module.lr_scale() == pytest.approx(32 * 1 * 2 / 512)
    # as if the loader had 10 batches per epoch: accumulate 2 -> 5 optimizer steps per epoch, 20 in all
    with patch.object(Trainer, "estimated_stepping_batches", new_callable=PropertyMock, return_value=20):
        config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    peak = 5e-4 * 0.125
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-7 * 0.125)  # warm-up start
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert not any(names[id(p)].endswith(".bias") for p in decay["params"])
    assert any("relative_position_bias_table" in names[id(p)] for p in decay["params"])  # official: decayed
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(peak)  # end of the 1-epoch (5-step) warm-up


def test_bad_delta_m_baseline_fails_early():
    with pytest.raises(ValueError, match="delta_m_baseline"):
        MultiTaskModule({"edge": 1}, tiny_encoder(), delta_m_baseline="pascal_context_swin_t")
    with pytest.raises(ValueError, match="task_channels is empty"):
        MultiTaskModule({}, tiny_encoder())


def test_hparams_are_plain_types():
    module = make_module()
    for key in ("encoder", "adapter", "decoder"):
        assert isinstance(module.hparams[key], dict)
    restored = MultiTaskModule(**module.hparams)
    assert restored.model.adapter_config == module.model.adapter_config
    torch.testing.assert_close(
        sum(p.numel() for p in restored.parameters()), sum(p.numel() for p in module.parameters())
    )


def test_task_without_labelled_pixel_in_an_epoch_is_warned_about(tmp_path, caplog):
    """human_parts on a PASCAL split without any person part: loss 0 all epoch, named in a warning."""
    import logging

    from mtlora.data import PascalContextDataModule

    from fixtures_data import write_fake_pascal

    fake = write_fake_pascal(tmp_path / "PASCAL_MT", n_train=3, n_val=1)
    split = fake.root / "ImageSets" / "Context" / "train.txt"

    def warnings_of_one_epoch(ids: list[str]) -> list[str]:
        split.write_text("\n".join(ids) + "\n")
        data = PascalContextDataModule(
            str(fake.root), tasks=list(PASCAL_CHANNELS), batch_size=2, num_workers=0, img_size=64
        )
        trainer = Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp_path,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtlora.training.module"):
            trainer.fit(make_module(lr_reference_batch=None), datamodule=data)
        return [r.getMessage() for r in caplog.records if "no labelled pixel" in r.getMessage()]

    # fixture kinds: index 0 has a person with parts, 1 only a cat, 2 a person without parts
    (warning,) = warnings_of_one_epoch(fake.train[1:])
    assert "training epoch 0" in warning and "human_parts" in warning and "semseg" not in warning
    assert warnings_of_one_epoch(fake.train) == []
