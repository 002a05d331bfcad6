"""Activation recomputation (full / selective) and exact tensor-memory counting of it."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlora.bench.memory import TensorMemoryMeter, fake_model, new_fake_mode, storage_bytes
from mtlora.models.model import EncoderConfig, MultiTaskModel
from mtlora.models.plans import AdapterConfig
from mtlora.models.recompute import checkpoint_mode

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

MTLORA = AdapterConfig(shared_rank=4, task_rank=2, dropout=0.1)


def build(mode, **encoder) -> MultiTaskModel:
    """embed_dim 80: dense GEMMs contract over > 64 channels (kept by ``selective``), adapters over 2-4."""
    torch.manual_seed(0)
    cfg = tiny_encoder(embed_dim=80, num_heads=[2, 2, 4, 4], gradient_checkpointing=mode, **encoder)
    model = MultiTaskModel(PASCAL_CHANNELS, cfg, MTLORA).train()
    randomize_lora(model, std=0.1)
    return model


def loss_of(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v.float() ** 2).mean() for v in out.values())


def backward_flops(model: MultiTaskModel, x: torch.Tensor) -> float:
    loss = loss_of(model(x))
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return float(counter.get_total_flops())


@pytest.mark.parametrize("mode", [True, "selective"])
def test_recomputation_is_exact_with_dropout_and_drop_path(mode):
    """Dropout and drop-path masks are replayed: same loss and gradients as without recomputation."""
    x = torch.randn(2, 3, 64, 64)
    ref = build(False, drop_path_rate=0.3)
    torch.manual_seed(1)
    ref_out = ref(x)
    loss_of(ref_out).backward()
    model = build(mode, drop_path_rate=0.3)
    torch.manual_seed(1)
    out = model(x)
    loss_of(out).backward()
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref_out[task], atol=0, rtol=0)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_selective_recomputes_no_dense_matmul_full_recomputes_them():
    """``selective`` keeps the dense GEMM outputs: its backward costs what the plain backward costs
    plus the rank-r up-projections; ``full`` repeats the encoder's dense forward FLOPs."""
    x = torch.randn(2, 3, 64, 64)
    flops = {mode: backward_flops(build(mode), x) for mode in (False, "selective", True)}
    model = build(False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.backbone(x)
    encoder_forward = float(counter.get_total_flops())
    assert flops[False] < flops["selective"] < flops[False] + 0.1 * encoder_forward
    assert flops[True] > flops[False] + 0.6 * encoder_forward  # all but the patch embedding


def test_recomputation_lowers_counted_training_memory():
    x = torch.randn(4, 3, 64, 64)
    peaks = {}
    for mode in (False, "selective", True):
        model = build(mode)
        with TensorMemoryMeter() as meter:
            loss_of(model(x)).backward()
        peaks[mode] = meter.peak
    assert peaks[True] < peaks["selective"] < 0.8 * peaks[False]


def test_checkpoint_mode_values_and_errors():
    assert [checkpoint_mode(v) for v in (False, None, "none", True, "full", "selective")] == [
        "none",
        "none",
        "none",
        "full",
        "full",
        "selective",
    ]
    with pytest.raises(ValueError, match="encoder.gradient_checkpointing.*'sometimes'"):
        EncoderConfig(gradient_checkpointing="sometimes").swin_config()


def test_eval_and_no_grad_run_without_recomputation():
    model = build("selective").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    plain = build(False).eval()
    with torch.no_grad():
        ref = plain(x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref[task], atol=0, rtol=0)


# ------------------------------------------------------------------------------ memory meter
def test_meter_counts_storages_once_and_frees_them():
    with TensorMemoryMeter() as meter:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        view = a.view(10, 100)[2:]  # a view: no new storage
        b = a * 2  # 4000
        a.mul_(3)  # in place: no new storage
        assert meter.live == 8000 and meter.peak == 8000
        del b
        assert meter.live == 4000
        c = torch.zeros(250, dtype=torch.float64)  # 2000
        assert meter.live == 6000 and meter.peak == 8000
    del view, c
    assert storage_bytes([a, a.view(-1)]) == 4000


def test_fake_tensors_count_like_real_ones():
    """Counting on fake tensors (no compute) gives the real run's peak, byte for byte."""
    x = torch.randn(2, 3, 64, 64)
    real = build("selective")
    with TensorMemoryMeter() as meter:
        loss_of(real(x)).backward()
    fake_mode = new_fake_mode()
    fake = fake_model(build("selective"), fake_mode)
    with fake_mode, TensorMemoryMeter() as fake_meter:
        loss_of(fake(fake_mode.from_tensor(x))).backward()
    assert fake_meter.peak == meter.peak > 0


def test_selective_checkpointing_option_trains_from_config():
    model = MultiTaskModel(
        PASCAL_CHANNELS, replace(tiny_encoder(), gradient_checkpointing="selective"), MTLORA
    ).train()
    loss_of(model(torch.randn(1, 3, 64, 64))).backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_selective_recomputation_compiles_as_one_graph():
    """The selective policy traces under ``torch.compile(fullgraph=True)`` and matches eager."""
    model = build("selective")
    for module in model.modules():  # no dropout: eager and compiled draw different random numbers
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    x = torch.randn(2, 3, 64, 64)

    def run(net):
        model.zero_grad(set_to_none=True)
        out = net(x)
        loss_of(out).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_out, ref_grads = run(model)
    out, grads = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref_out[task], atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
