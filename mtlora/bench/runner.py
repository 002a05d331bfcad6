"""``run_bench``: every variant counted, then timed in turn on one device, into one JSON-able report."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict

import torch

from mtlora.bench.counting import count_variant
from mtlora.bench.host import (
    MemoryMeter,
    device_name,
    device_peak_tflops,
    git_commit,
    host_memory_kept,
    resolve_precision,
)
from mtlora.bench.report import summarise
from mtlora.bench.timing import measure_inference, measure_training
from mtlora.bench.variants import BenchSettings, Variant, build_variant, synthetic_batch
from mtlora.losses import MultiTaskLoss
from mtlora.models.model import MultiTaskModel

log = logging.getLogger(__name__)


def bench_variant(
    template: MultiTaskModel,
    variant: Variant,
    criterion: MultiTaskLoss,
    settings: BenchSettings,
    device: torch.device,
    precision: str,
    peak_tflops: float | None,
    counts: dict,
) -> dict:
    """The timed measurements of one variant, added to its ``counts`` (:func:`count_variant`).

    The model is built here and freed before returning.  MFU = counted training FLOPs per image
    x images/s / the device's peak.
    """
    result = copy.deepcopy(counts)
    meter = MemoryMeter(device)
    meter.mark_baseline()
    model = build_variant(template, variant, settings.img_size).to(device)
    batch = synthetic_batch(
        model.task_channels,
        settings.batch_size,
        model.encoder_config.img_size,
        device,
        settings.seed,
    )
    result["memory_kind"] = meter.kind
    train_flops = result["train_flops_per_image"]
    phases = [("train", False)] + ([("train_compiled", True)] if settings.compiles(variant) else [])
    for name, compiled in phases:
        log.info("bench %s: %s", variant, name)
        res = measure_training(model, criterion, batch, settings, precision, meter, compiled)
        achieved = train_flops * res["images_per_s"]
        res["achieved_tflops"] = achieved / 1e12
        res["mfu"] = achieved / (peak_tflops * 1e12) if peak_tflops else None
        result[name] = res
    if settings.inference:
        log.info("bench %s: inference", variant)
        result["inference"] = measure_inference(
            model, batch["image"], settings, precision, settings.compiles(variant)
        )
    del model, batch
    MemoryMeter.release()
    return result


def best_of(runs: list[dict]) -> dict:
    """Combine repeated measurements of one variant: the fastest run of each phase, the smallest peak.

    On a shared machine other processes only ever slow a run down or inflate its resident set,
    so the best values are the least disturbed ones.  Every run's throughput stays in ``runs``.
    """
    best = copy.deepcopy(runs[0])
    for phase in ("train", "train_compiled"):
        if phase not in best:
            continue
        fastest = max((r[phase] for r in runs), key=lambda m: m["images_per_s"])
        peaks = [r[phase]["peak_memory_bytes"] for r in runs if r[phase]["peak_memory_bytes"] is not None]
        best[phase] = {**fastest, "peak_memory_bytes": min(peaks) if peaks else None}
    if "inference" in best:
        for key in best["inference"]:
            if key.endswith(("_images_per_s", "_max_abs_diff")):  # fastest; worst-case difference
                best["inference"][key] = max(r["inference"][key] for r in runs)
    best["runs"] = [
        {phase: r[phase]["images_per_s"] for phase in ("train", "train_compiled") if phase in r}
        | {k: v for k, v in r.get("inference", {}).items() if k.endswith("_images_per_s")}
        for r in runs
    ]
    return best


def run_bench(
    template: MultiTaskModel,
    criterion: MultiTaskLoss,
    settings: BenchSettings,
    device: torch.device | str = "cpu",
) -> dict:
    """Measure every variant of ``settings.variants`` on ``device`` and return a JSON-able report.

    Throughput numbers depend on the machine; the report records the device, the settings and
    the git commit.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(settings.precision, device)
    peak, peak_source = device_peak_tflops(device, precision, settings.peak_tflops)
    torch.manual_seed(settings.seed)
    names = list(dict.fromkeys(settings.variants))
    counts = {name: count_variant(template, name, criterion, settings, precision) for name in names}
    host_allocator = None
    if settings.count_only:
        variants = counts
    else:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        with host_memory_kept(device) as host_allocator:
            for _ in range(max(1, settings.repeats)):  # round robin: load changes hit every variant alike
                for name in names:
                    runs[name].append(
                        bench_variant(
                            template, name, criterion, settings, device, precision, peak, counts[name]
                        )
                    )
        variants = {name: best_of(results) for name, results in runs.items()}
    return {
        "device": {
            "type": device.type,
            "name": device_name(device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "peak_tflops": peak,
            "peak_source": peak_source,
            "host_allocator": host_allocator,
        },
        "settings": {
            **asdict(settings),
            "img_size": settings.img_size or template.encoder_config.img_size,
            "precision": precision,
        },
        "model": {
            "tasks": list(template.tasks),
            "adapter": asdict(template.adapter_config),
            "encoder": asdict(template.encoder_config),
        },
        "torch": torch.__version__,
        "git": git_commit(),
        "variants": variants,
        "ratios": summarise(variants, settings.compiles("config")),
    }
