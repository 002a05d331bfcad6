"""CUDA-only checks (skipped without a GPU; run on a lent device by benchmarks/device_check.sh).

What a CPU cannot show: bf16 autocast on CUDA kernels, inductor-compiled training against eager,
no host synchronisation in a real CUDA training step, and whether the device-independent memory
count (:mod:`mtlora.bench.memory`) agrees with the CUDA allocator.
"""

import warnings
from dataclasses import replace

import pytest
import torch

from mtlora.bench import BenchSettings, build_variant, count_variant, make_train_step, synthetic_batch
from mtlora.losses import MultiTaskLoss
from mtlora.models.merging import merge_model
from mtlora.models.model import MultiTaskModel
from mtlora.models.plans import AdapterConfig
from mtlora.training.module import MultiTaskModule

from conftest import PASCAL_CHANNELS, randomize_lora, tiny_encoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
ADAPTER = AdapterConfig(shared_rank=4, task_rank=2, dropout=0.0)


def build(**encoder) -> MultiTaskModel:
    torch.manual_seed(0)
    cfg = tiny_encoder(embed_dim=96, num_heads=[3, 6, 12, 24], window_size=4, img_size=128, **encoder)
    model = MultiTaskModel(PASCAL_CHANNELS, cfg, ADAPTER)
    randomize_lora(model, std=0.05)
    return model.to(CUDA)


def loss_and_grads(model, net, x):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    sum((v.float() ** 2).mean() for v in out.values()).backward()
    return out, {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_bf16_compiled_training_matches_eager():
    model = build().train()
    x = torch.randn(4, 3, 128, 128, device=CUDA)
    ref_out, ref_grads = loss_and_grads(model, model, x)
    out, grads = loss_and_grads(model, torch.compile(model, fullgraph=True), x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task].float(), ref_out[task].float(), atol=5e-2, rtol=5e-2)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.98 or ref_grads[name].abs().max() < 1e-6, name


@pytest.mark.parametrize("mode", [True, "selective"])
def test_recomputation_equals_plain_on_cuda(mode):
    x = torch.randn(2, 3, 128, 128, device=CUDA)
    model = build().train()
    ref_out, ref_grads = loss_and_grads(model, model, x)
    model.backbone.cfg = replace(model.backbone.cfg, gradient_checkpointing=mode)
    out, grads = loss_and_grads(model, model, x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task], ref_out[task], atol=0, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-3, rtol=1e-2, msg=name)


def test_training_step_does_not_synchronise():
    module = MultiTaskModule(
        PASCAL_CHANNELS,
        encoder=tiny_encoder(),
        adapter={"shared_rank": 4, "task_rank": 2},
        delta_m_baseline=None,
    ).to(CUDA)
    batch = synthetic_batch(PASCAL_CHANNELS, 2, 64, CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer warns
        module.training_step(batch, 0).backward()  # warm-up: lazy CUDA initialisation may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            module.training_step(batch, 0).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_merged_model_matches_unmerged_in_bf16():
    model = build().eval()
    x = torch.randn(2, 3, 128, 128, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x)
        merge_model(model)
        out = model(x)
    for task in PASCAL_CHANNELS:
        torch.testing.assert_close(out[task].float(), ref[task].float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("variant", ["config", "full", "selective"])
def test_counted_peak_memory_agrees_with_the_cuda_allocator(variant):
    """The count (fake tensors, CPU) within 10% of ``max_memory_allocated`` for the same step."""
    template = build().cpu()
    criterion = MultiTaskLoss(list(PASCAL_CHANNELS))
    settings = BenchSettings(batch_size=8, img_size=128)
    counted = count_variant(template, variant, criterion, settings, "bf16")["counted_peak_memory_bytes"]
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = build_variant(template, variant, 128).to(CUDA)
    batch = synthetic_batch(PASCAL_CHANNELS, 8, 128, CUDA)
    input_bytes = sum(t.numel() * t.element_size() for t in batch.values())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True)
    step = make_train_step(model, criterion, optimizer, CUDA, "bf16")
    for _ in range(2):
        step(batch)
    measured = torch.cuda.max_memory_allocated() - base - input_bytes
    assert abs(measured - counted) < 0.1 * measured, (variant, measured, counted)
