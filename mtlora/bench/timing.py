"""Timed measurements of one variant on a real device: training steps and inference.

Timing is ``torch.utils.benchmark.Timer`` (synchronises the device around the timed calls, none
inside them) at the process' thread count, after a first call timed on its own (compilation
happens there) and warm-up calls.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils import benchmark

from mtlora.bench.counting import has_adapters
from mtlora.bench.host import MemoryMeter, cuda_sync_warnings, synchronize
from mtlora.bench.memory import ValueReadCounter
from mtlora.bench.variants import BenchSettings, autocast, make_train_step
from mtlora.losses import MultiTaskLoss
from mtlora.models.merging import merge_model
from mtlora.models.model import MultiTaskModel

# torch.utils.benchmark's Timer.timeit runs this many untimed calls itself before timing
_TIMER_WARMUP = 2


def timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call over ``steps`` calls, seconds of the first call); ``warmup`` calls untimed first.

    The first call is one of the warm-up calls, and so are the timer's own two, so at least
    three calls run untimed.
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1 - _TIMER_WARMUP)):
        fn()
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(steps).mean, first


def measure_training(
    model: MultiTaskModel,
    criterion: MultiTaskLoss,
    batch: dict[str, Tensor],
    settings: BenchSettings,
    precision: str,
    meter: MemoryMeter,
    compiled: bool = False,
) -> dict:
    """Images/s and peak memory of full training steps (AdamW on the trainable parameters only)."""
    device = batch["image"].device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")
    net: nn.Module = torch.compile(model, fullgraph=True) if compiled else model
    model.train()
    train_step = make_train_step(net, criterion, optimizer, device, precision)
    meter.reset_peak()
    seconds, first = timed(lambda: train_step(batch), settings.steps, settings.warmup, device)
    peak = meter.peak()
    finite = bool(torch.isfinite(train_step(batch)))  # one sync, outside the timed loop
    syncs = cuda_sync_warnings(lambda: train_step(batch), device)
    reads = None
    if not compiled:
        # value reads in forward + loss + backward (the optimizer's own step counter is excluded)
        with ValueReadCounter() as counter:
            make_train_step(model, criterion, None, device, precision)(batch)
        reads = counter.count
    model.zero_grad(set_to_none=True)
    bsz = batch["image"].shape[0]
    return {
        "images_per_s": bsz / seconds,
        "step_ms": 1e3 * seconds,
        "first_step_s": first,
        "peak_memory_bytes": peak,
        "loss_finite": finite,
        "value_reads_fwd_bwd": reads,
        "cuda_sync_warnings_per_step": syncs,
    }


def _max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[t].float() - b[t].float()).abs().max()) for t in a)


def measure_inference(
    model: MultiTaskModel, image: Tensor, settings: BenchSettings, precision: str, compiled: bool = False
) -> dict:
    """Images/s in eval mode: eager, merged, and with ``compiled`` both compiled, with output checks.

    Merged and compiled outputs are compared with eager ones (max abs difference is reported).
    """
    device = image.device
    model.eval()
    out: dict[str, float | None] = {}

    def run(net: nn.Module, name: str) -> dict[str, Tensor]:
        def call():
            with torch.inference_mode(), autocast(device, precision):
                return net(image)

        seconds, first = timed(call, settings.steps, settings.warmup, device)
        out[f"{name}_images_per_s"] = image.shape[0] / seconds
        if name.endswith("compiled"):
            out[f"{name}_first_call_s"] = first
        return call()

    reference = run(model, "eager")
    if compiled:
        out["compiled_max_abs_diff"] = _max_abs_diff(
            run(torch.compile(model, fullgraph=True), "compiled"), reference
        )
    if has_adapters(model):
        merged = copy.deepcopy(model)
        report = merge_model(merged)
        out["merged_layers"] = len(report.shared) + len(report.stream_paths)
        out["merged_max_abs_diff"] = _max_abs_diff(run(merged, "merged"), reference)
        if compiled:
            net = torch.compile(merged, fullgraph=True)
            out["merged_compiled_max_abs_diff"] = _max_abs_diff(run(net, "merged_compiled"), reference)
        del merged
    return out
