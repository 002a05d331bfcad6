"""Training and inference benchmark of one configuration against its baselines (``mtlora bench``).

For the configured architecture :func:`run_bench` builds variants — the config as is
(``config``), full fine-tuning of the plain network (``full``), decoders only (``decoders``), the
config with full or selective activation recomputation (``checkpointing``, ``selective``), and the
config's own network with every weight trained (``config_full``: task streams and adapters kept,
so it isolates what frozen weights save), the config without its task-specific streams
(``shared_only``: every block task-agnostic, so it isolates what the streams cost) and a frozen
encoder that gradients still cross down to the patch embedding (``frozen_encoder``: the training
cost of adapters that cost nothing, i.e. the floor of any method that adapts every block) — and
measures on one device, with synthetic inputs and targets so that no data loading is timed:

* **training**: images/s of forward + loss (:class:`~mtlora.losses.MultiTaskLoss`) + backward +
  AdamW step on the trainable parameters, after warm-up, timed between device synchronisations
  (no host synchronisation inside the timed loop); optionally also under ``torch.compile``.  On a
  CPU, freed memory stays in the heap while timing (:func:`host_memory_kept`), as a caching
  allocator keeps it, so that page faults of fresh large blocks are not timed as model work.
* **counted** (:func:`count_variant`, on fake tensors, any device, any size): FLOPs per image,
  activations saved for backward, and the exact peak tensor memory of a training step
  (:mod:`mtlora.tensor_memory`); ``count_only`` stops there.
* **peak memory** of training: ``torch.cuda.max_memory_allocated`` on CUDA (weights, gradients,
  optimizer state and activations); on CPU the growth of the process' peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident set before the variant
  was built — an approximation that also counts allocator caching; None where ``/proc`` lacks it.
* **inference** (eval mode, ``inference_mode``): eager, ``torch.compile(fullgraph=True)``, and
  with the adapters merged (:mod:`mtlora.models.merging`), eager and compiled; the merged and
  compiled outputs are compared with eager ones (max abs difference is reported).
* **host synchronisations** of one training step, outside the timed loop: tensor values read
  into Python during forward + loss + backward (:class:`ValueReadCounter`, any device), and on
  CUDA the synchronising calls of a whole step per ``torch.cuda.set_sync_debug_mode``.
* **model FLOPs utilisation**: training FLOPs per image / step time / device peak.  The FLOPs
  are those a training step actually needs, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
  around forward + loss + backward of one image in train mode without gradient checkpointing
  (matmuls, convolutions, attention; element-wise work is not counted, as usual for MFU).  For
  full fine-tuning that is about 3x the forward; for PEFT the backward through frozen weights
  has no weight-gradient GEMMs and stops below the lowest trainable parameter, so it is less.
  Recomputation by checkpointing is not model FLOPs, hence counted without it.  The peak comes
  from :data:`PEAK_TFLOPS` for known GPUs (dense, no sparsity) or ``peak_tflops``; unknown
  devices (CPUs) report MFU as None.

Throughput numbers depend on the machine; the JSON records the device, the settings and the git
commit.  Adapter B matrices (zero at init) are given small random values first, so that the
merged-vs-unmerged comparison checks something.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import logging
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from mtlora.losses import MultiTaskLoss
from mtlora.models.lora import lora_layers
from mtlora.models.merging import merge_model
from mtlora.models.methods import is_lora
from mtlora.models.model import MultiTaskModel, parameter_counts
from mtlora.tasks import IGNORE_INDEX, task_info
from mtlora.tensor_memory import TensorMemoryMeter, fake_model, new_fake_mode, storage_bytes, to_fake

log = logging.getLogger(__name__)

Variant = Literal[
    "config", "full", "decoders", "checkpointing", "selective", "config_full", "shared_only", "frozen_encoder"
]
Precision = Literal["auto", "bf16", "fp32"]

# Dense peak TFLOP/s (no structured sparsity) by name fragment, first match wins; bf16 = tensor
# cores with fp32 accumulation, fp32 = plain fp32 (PyTorch leaves TF32 off for matmuls by default).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("GH200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
]

TARGETS = {
    "train_speedup_vs_full": 1.2,  # >=
    "train_memory_vs_full": 0.6,  # <=
    "merged_inference_vs_plain": 0.95,  # >=
    "train_mfu": 0.35,  # >=
}


@dataclass
class BenchSettings:
    """What to measure; see ``mtlora bench --help`` for the meaning of each field."""

    batch_size: int = 32
    img_size: int | None = None
    steps: int = 20
    warmup: int = 5
    precision: Precision = "auto"
    compile: bool | list[Variant] = False

    variants: list[Variant] = field(default_factory=lambda: ["config", "full", "decoders"])
    peak_tflops: float | None = None
    inference: bool = True
    repeats: int = 1
    seed: int = 0
    count_only: bool = False

    def compiles(self, variant: str) -> bool:
        """Whether ``variant`` is also measured under ``torch.compile`` (all, or the listed ones)."""
        return self.compile is True or (isinstance(self.compile, list) and variant in self.compile)


# ---------------------------------------------------------------------------------------- device
def resolve_precision(precision: Precision, device: torch.device) -> Literal["bf16", "fp32"]:
    """``auto``: bf16 autocast on a CUDA device that supports it, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from ``/proc/cpuinfo`` (``platform.processor()`` is often empty)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_peak_tflops(
    device: torch.device, precision: str, override: float | None = None
) -> tuple[float | None, str]:
    """Peak dense TFLOP/s of ``device`` at ``precision`` and where the number came from."""
    if override is not None:
        return float(override), "user (--peak_tflops)"
    if device.type != "cuda":
        return None, "unknown peak (pass --peak_tflops)"
    name = device_name(device)
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks[precision], f"table: {fragment} {precision} dense"
    return None, f"unknown peak for {name!r} (pass --peak_tflops)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit() -> dict[str, str | bool | None]:
    """Short commit of the library's checkout and whether the working tree differs from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no") != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (``malloc_trim`` and ``mallopt`` are glibc extensions)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


class MemoryMeter:
    """Peak memory of one phase: CUDA allocator peak, or peak RSS growth of the process on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"

    @staticmethod
    def _proc_status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    @staticmethod
    def release() -> None:
        """Free what earlier phases left behind so that they do not hide this phase's growth."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        libc = _glibc()
        if libc is not None:  # glibc keeps freed blocks; give them back so RSS growth is visible again
            libc.malloc_trim(0)

    def mark_baseline(self) -> None:
        """Call before the variant is built: its weights count towards the peak."""
        self.release()
        if self.device.type == "cuda":
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self._proc_status("VmRSS") or 0

    def reset_peak(self) -> None:
        """Call right before the measured phase."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.baseline = -1

    def peak(self) -> int | None:
        """Bytes above the baseline at the peak of the phase (None where not measurable)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        hwm = self._proc_status("VmHWM")
        if hwm is None or self.baseline < 0:
            return None
        return max(0, hwm - self.baseline)


# glibc mallopt parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


@contextlib.contextmanager
def host_memory_kept(device: torch.device):
    """On a CPU device with glibc, keep freed memory in the process heap while timing.

    glibc serves large blocks (above 32 MiB at most: MTLoRA's task-stacked tensors at any real
    size) with fresh ``mmap``s and unmaps them on free, so every step pays the page faults of
    touching them again; in a container that can cost more than the arithmetic (a 77 MB allocate
    + fill: 29 ms against 3.6 ms to refill).  CUDA's caching allocator and jemalloc/tcmalloc,
    which PyTorch recommends for CPU training, keep such blocks, so timings with glibc's defaults
    would rank methods by their allocation sizes.  Yields a description for the report (None
    where nothing was changed); glibc's documented defaults are restored afterwards (its dynamic
    mmap threshold, which any ``mallopt`` switches off, stays off).
    """
    libc = _glibc() if device.type == "cpu" else None
    mallopt = None if libc is None else libc.mallopt
    if mallopt is None or not mallopt(_M_MMAP_MAX, 0):
        yield None
        return
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield "glibc heap kept (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
    finally:
        for param, value in _GLIBC_DEFAULTS.items():
            mallopt(param, value)


class ValueReadCounter(TorchDispatchMode):
    """Counts reads of tensor values into Python (``.item()``, ``bool(t)``, ``.tolist()``).

    On a GPU each such read is a host synchronisation; counting them at the dispatcher finds
    them on any device, CPU included, so tests can assert their absence without a GPU.
    """

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def cuda_sync_warnings(fn: Callable[[], object], device: torch.device) -> int | None:
    """Synchronising CUDA calls made by ``fn`` per ``torch.cuda.set_sync_debug_mode``; None off CUDA."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# ---------------------------------------------------------------------------------------- inputs
def synthetic_batch(
    task_channels: dict[str, int], batch_size: int, img_size: int, device: torch.device, seed: int = 0
) -> dict[str, Tensor]:
    """Random image and targets in the batch convention of :mod:`mtlora.tasks` (5% ignored pixels)."""
    g = torch.Generator().manual_seed(seed)
    b, s = batch_size, img_size
    batch: dict[str, Tensor] = {"image": torch.randn(b, 3, s, s, generator=g)}
    ignore = torch.rand(b, 1, s, s, generator=g) < 0.05
    for task, channels in task_channels.items():
        kind = task_info(task).kind
        if kind == "segmentation":
            target = torch.randint(0, channels, (b, s, s), generator=g)
            target[ignore[:, 0]] = IGNORE_INDEX
        elif kind == "binary":
            target = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
            target[ignore] = IGNORE_INDEX
        elif kind == "normals":
            target = torch.nn.functional.normalize(torch.randn(b, 3, s, s, generator=g), dim=1)
            target[ignore.expand_as(target)] = IGNORE_INDEX
        else:
            target = torch.rand(b, 1, s, s, generator=g) * 10
            target[ignore] = IGNORE_INDEX
        batch[task] = target
    return {k: v.to(device) for k, v in batch.items()}


def build_variant(template: MultiTaskModel, variant: Variant, img_size: int | None = None) -> MultiTaskModel:
    """A freshly initialised model of ``template``'s architecture, adapted as ``variant`` says."""
    encoder = replace(template.encoder_config, pretrained=None)
    if img_size is not None:
        encoder = replace(encoder, img_size=img_size)
    adapter = template.adapter_config
    if variant in ("full", "decoders"):
        adapter = replace(adapter, method=variant)
    elif variant == "checkpointing":
        encoder = replace(encoder, gradient_checkpointing=True)
    elif variant == "selective":
        encoder = replace(encoder, gradient_checkpointing="selective")
    elif variant == "shared_only":
        if not is_lora(adapter):
            raise ValueError(
                f"bench variant shared_only needs task streams to remove; adapter.method={adapter.method!r} has none"
            )
        adapter = replace(adapter, plan=["shared"] * len(template.plan.blocks))
    elif variant == "frozen_encoder":
        adapter = replace(adapter, method="decoders")
    model = MultiTaskModel(
        template.task_channels,
        encoder,
        adapter,
        copy.deepcopy(template.decoder_config),
        load_pretrained=False,
    )
    if variant == "config_full":
        model.requires_grad_(True)
    elif variant == "frozen_encoder":  # gradients must flow through every block down to the image stem
        model.backbone.patch_embed.requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make merged == unmerged trivially true
        for layer in lora_layers(model).values():
            for p in (getattr(layer, n) for n in ("lora_shared_B", "lora_paths_B") if hasattr(layer, n)):
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    return model


# ---------------------------------------------------------------------------------------- steps
def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_train_step(
    model: nn.Module,
    criterion: MultiTaskLoss,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    precision: str,
) -> Callable[[dict[str, Tensor]], Tensor]:
    """One training step as a closure; no host synchronisation (no ``.item()``) inside."""

    def loss(batch: dict[str, Tensor]) -> Tensor:
        with _autocast(device, precision):
            outputs = model(batch["image"])
        losses = criterion(outputs, batch)
        return sum(criterion.weights[t] * losses[t] for t in criterion.tasks)

    def step(batch: dict[str, Tensor]) -> Tensor:
        total = loss(batch)  # the full-size outputs are freed before backward, as after a training_step
        total.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return total.detach()

    return step


def saved_activation_bytes(
    model: MultiTaskModel, criterion: MultiTaskLoss, batch: dict[str, Tensor], precision: str
) -> int:
    """Bytes autograd keeps for the backward of one training forward + loss (parameters excluded).

    An exact count of activation memory (unique storages packed by ``saved_tensors_hooks``),
    unlike a process' resident set.  With full gradient checkpointing it only sees what the
    checkpointed blocks' outputs feed into (their saved inputs are held by the checkpoint); the
    tensors a selective policy keeps are included where torch shows them to the hooks.
    """
    params = WeakIdKeyDictionary({p.untyped_storage(): True for p in model.parameters()})
    # keyed by the storage objects: fake tensors' storages have no address
    storages: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage not in params and storage.nbytes():
            storages[storage] = storage.nbytes()
        return t

    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        _autocast(batch["image"].device, precision),
    ):
        outputs = model(batch["image"])
    losses = criterion(outputs, batch)
    total = sum(criterion.weights[t] * losses[t] for t in criterion.tasks)
    saved = sum(storages.values())  # before the graph (and with it the weak keys) is freed
    del outputs, losses, total
    return saved


def train_flops_per_image(
    model: MultiTaskModel, criterion: MultiTaskLoss, batch: dict[str, Tensor], precision: str
) -> tuple[float, float]:
    """(training, forward) FLOPs of one image, counted on the first image of ``batch`` (see module doc)."""
    one = {k: v[:1] for k, v in batch.items()}
    device = one["image"].device
    was_training = model.training
    cfg = model.backbone.cfg
    model.backbone.cfg = replace(cfg, gradient_checkpointing=False)  # recomputation is not model FLOPs
    try:
        model.train()
        with FlopCounterMode(display=False) as counter:
            make_train_step(model, criterion, None, device, precision)(one)
        train = float(counter.get_total_flops())
        model.zero_grad(set_to_none=True)
        model.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad(), _autocast(device, precision):
            model(one["image"])
        forward = float(counter.get_total_flops())
    finally:
        model.backbone.cfg = cfg
        model.train(was_training)
    return train, forward


def count_variant(
    template: MultiTaskModel,
    variant: Variant,
    criterion: MultiTaskLoss,
    settings: BenchSettings,
    precision: str,
) -> dict:
    """Device-independent counts of one variant, on fake tensors (no compute, no memory).

    FLOPs per image (training and forward, also merged), bytes autograd saves for backward, and
    the peak tensor memory of training (weights + gradients + AdamW state + activations, over two
    steps, so that the optimizer state exists) at the bench's batch size, image size and
    precision.  Kernels are those of the CPU (e.g. its attention kernel's saved tensors), which
    keep the same tensors as CUDA's for this model up to small workspaces.
    """
    model = build_variant(template, variant, settings.img_size)
    weights = storage_bytes([*model.parameters(), *model.buffers()])
    img = model.encoder_config.img_size
    mode = new_fake_mode()
    fake_model(model, mode)
    batch = to_fake(
        synthetic_batch(model.task_channels, settings.batch_size, img, torch.device("cpu"), settings.seed),
        mode,
    )
    with mode:
        train_flops, fwd_flops = train_flops_per_image(model, criterion, batch, precision)
        saved = saved_activation_bytes(model, criterion, batch, precision)
        with TensorMemoryMeter() as meter:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True)
            step = make_train_step(model, criterion, optimizer, torch.device("cpu"), precision)
            for _ in range(2):
                step(batch)
        del optimizer, step, params
        merged_flops = None
        if lora_layers(model):
            merge_model(model.eval())
            with (
                FlopCounterMode(display=False) as counter,
                torch.no_grad(),
                _autocast(torch.device("cpu"), precision),
            ):
                model(batch["image"][:1])
            merged_flops = float(counter.get_total_flops())
    return {
        "method": model.adapter_config.method,
        "gradient_checkpointing": model.encoder_config.gradient_checkpointing,
        "parameters": parameter_counts(model),
        "train_flops_per_image": train_flops,
        "forward_flops_per_image": fwd_flops,
        "merged_forward_flops_per_image": merged_flops,
        "saved_activation_bytes": saved,
        "counted_peak_memory_bytes": weights + meter.peak,
    }


def _timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds per call after ``warmup`` calls, seconds of the first call) between synchronisations."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps, first


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
    seconds, first = _timed(lambda: train_step(batch), settings.steps, settings.warmup, device)
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
    """Images/s in eval mode: eager, merged, and with ``compiled`` both compiled, with output checks."""
    device = image.device
    model.eval()
    out: dict[str, float | None] = {}

    def run(net: nn.Module, name: str) -> dict[str, Tensor]:
        def call():
            with torch.inference_mode(), _autocast(device, precision):
                return net(image)

        seconds, first = _timed(call, settings.steps, settings.warmup, device)
        out[f"{name}_images_per_s"] = image.shape[0] / seconds
        if name.endswith("compiled"):
            out[f"{name}_first_call_s"] = first
        return call()

    reference = run(model, "eager")
    if compiled:
        out["compiled_max_abs_diff"] = _max_abs_diff(
            run(torch.compile(model, fullgraph=True), "compiled"), reference
        )
    if lora_layers(model):
        merged = copy.deepcopy(model)
        report = merge_model(merged)
        out["merged_layers"] = len(report.shared) + len(report.stream_paths)
        out["merged_max_abs_diff"] = _max_abs_diff(run(merged, "merged"), reference)
        if compiled:
            net = torch.compile(merged, fullgraph=True)
            out["merged_compiled_max_abs_diff"] = _max_abs_diff(run(net, "merged_compiled"), reference)
        del merged
    return out


# ---------------------------------------------------------------------------------------- driver
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

    The model is built here and freed before returning.
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(variants: dict[str, dict], compiled: bool) -> dict:
    """The issue's target ratios (config vs full fine-tuning / the plain network) where measurable.

    Like is compared with like: with ``compiled`` every ratio uses the compiled measurements of
    both sides (the compiler also changes memory: it recomputes cheap activations in backward).
    Memory is the CUDA allocator's peak when measured on CUDA, else the exact counted peak
    (:func:`count_variant`; a CPU's resident set also holds allocator caches and Python).
    """
    phase = "train_compiled" if compiled else "train"
    out: dict[str, dict] = {}
    cfg, full = variants.get("config"), variants.get("full")
    plain = variants.get("decoders") or full
    if cfg and full and phase in cfg and phase in full:
        out["train_speedup_vs_full"] = {
            "value": _ratio(cfg[phase]["images_per_s"], full[phase]["images_per_s"]),
            "phase": phase,
        }
    if cfg and full and phase in cfg and phase in full and cfg.get("memory_kind", "").startswith("cuda"):
        out["train_memory_vs_full"] = {
            "value": _ratio(cfg[phase]["peak_memory_bytes"], full[phase]["peak_memory_bytes"]),
            "phase": phase,
            "source": "measured",
        }
    elif cfg and full:  # off CUDA the resident set is a poor proxy: use the exact count
        out["train_memory_vs_full"] = {
            "value": _ratio(cfg["counted_peak_memory_bytes"], full["counted_peak_memory_bytes"]),
            "source": "counted",
        }
    if cfg and plain and "inference" in cfg and "merged_images_per_s" in cfg["inference"]:
        key = "merged_compiled_images_per_s" if compiled else "merged_images_per_s"
        base = "compiled_images_per_s" if compiled else "eager_images_per_s"
        out["merged_inference_vs_plain"] = {
            "value": _ratio(cfg["inference"].get(key), plain["inference"].get(base)),
            "plain_variant": "decoders" if "decoders" in variants else "full",
        }
    if cfg and phase in cfg:
        out["train_mfu"] = {"value": cfg[phase]["mfu"], "phase": phase}
    for name, entry in out.items():
        target, value = TARGETS[name], entry["value"]
        entry["target"] = target
        entry["met"] = (
            None
            if value is None
            else (value <= target if name == "train_memory_vs_full" else value >= target)
        )
    return out


def run_bench(
    template: MultiTaskModel,
    criterion: MultiTaskLoss,
    settings: BenchSettings,
    device: torch.device | str = "cpu",
) -> dict:
    """Measure every variant of ``settings.variants`` on ``device`` and return a JSON-able report."""
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


def _ordered(variants: dict[str, dict]) -> list[tuple[str, dict]]:
    """Variants in the order of :data:`Variant` (a JSON file written with sorted keys loses it)."""
    order = {name: i for i, name in enumerate(Variant.__args__)}
    return sorted(variants.items(), key=lambda item: order.get(item[0], len(order)))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def format_report(report: dict) -> str:
    """Plain-text tables of a :func:`run_bench` report."""
    s, d = report["settings"], report["device"]
    variants = _ordered(report["variants"])
    full = report["variants"].get("full")
    lines = [
        f"device: {d['name']} ({d['type']}, {d['torch_threads']} threads)   peak: "
        f"{_fmt(d['peak_tflops'], '.0f')} TFLOP/s [{d['peak_source']}]"
        + (f"   host memory: {d['host_allocator']}" if d.get("host_allocator") else ""),
        f"input {s['img_size']}x{s['img_size']}, batch {s['batch_size']}, {s['precision']}, "
        + (
            "counted only (fake tensors, nothing timed)"
            if s.get("count_only")
            else f"{s['warmup']} warm-up + {s['steps']} timed steps"
        )
        + f", git {report['git']['commit']}{' (dirty)' if report['git']['dirty'] else ''}",
        "",
        "counted (device-independent: FLOPs per image; saved = activations kept for backward; "
        "peak = weights + grads + AdamW state + activations of a training step; mem/full = peak / full's; "
        "flop cap = full's training FLOPs / this one's, the speed-up over full at equal MFU)",
        f"{'variant':<16}{'method':<12}{'ckpt':<10}{'trainable':>12}{'train GF':>10}{'fwd GF':>8}"
        f"{'merged GF':>10}{'saved MiB':>10}{'peak MiB':>10}{'mem/full':>9}{'flop cap':>9}",
    ]
    for name, v in variants:
        peak = v.get("counted_peak_memory_bytes")
        ratio = _ratio(peak, full.get("counted_peak_memory_bytes")) if full else None
        cap = _ratio(full["train_flops_per_image"], v["train_flops_per_image"]) if full else None
        merged = v.get("merged_forward_flops_per_image")
        lines.append(
            f"{name:<16}{v['method']:<12}{str(v.get('gradient_checkpointing', False)):<10}"
            f"{v['parameters']['trainable']:>12,}{v['train_flops_per_image'] / 1e9:>10.2f}"
            f"{v['forward_flops_per_image'] / 1e9:>8.2f}{_fmt(None if merged is None else merged / 1e9, '.2f'):>10}"
            f"{_mib(v.get('saved_activation_bytes', 0)):>10.0f}{_fmt(_mib(peak), '.0f'):>10}"
            f"{_fmt(ratio, '.3f'):>9}{_fmt(cap, '.3f'):>9}"
        )
    timed = [(n, v) for n, v in variants if "train" in v]
    if timed:
        lines += [
            "",
            "training, timed (peak: the device's own peak of the phase: CUDA allocator, or CPU resident-set growth)",
            f"{'variant':<16}{'img/s':>9}{'step ms':>10}{'vs full':>8}{'peak MiB':>10}{'TFLOP/s':>9}{'MFU':>7}",
        ]
        for name, v in timed:
            for phase in ("train", "train_compiled"):
                if phase not in v:
                    continue
                r = v[phase]
                speed = (
                    _ratio(r["images_per_s"], full[phase]["images_per_s"]) if full and phase in full else None
                )
                label = name if phase == "train" else "  +compile"
                lines.append(
                    f"{label:<16}{r['images_per_s']:>9.2f}{r['step_ms']:>10.1f}{_fmt(speed, '.3f'):>8}"
                    f"{_fmt(_mib(r['peak_memory_bytes']), '.0f'):>10}{r['achieved_tflops']:>9.3f}"
                    f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f'):>7}"
                )
    if any("inference" in v for v in report["variants"].values()):
        lines += [
            "",
            "inference (images/s)",
            f"{'variant':<16}{'eager':>10}{'compiled':>10}{'merged':>10}{'merged+c':>10}{'merge diff':>12}",
        ]
        for name, v in variants:
            inf = v.get("inference")
            if not inf:
                continue
            lines.append(
                f"{name:<16}"
                f"{_fmt(inf.get('eager_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('compiled_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_compiled_images_per_s'), '.2f'):>10}"
                f"{_fmt(inf.get('merged_max_abs_diff'), '.1e'):>12}"
            )
    if report["ratios"]:
        lines += ["", "targets (config vs full fine-tuning / the plain network)"]
        for name, r in sorted(report["ratios"].items(), key=lambda item: list(TARGETS).index(item[0])):
            cmp = "<=" if name == "train_memory_vs_full" else ">="
            met = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
            source = f" [{r['source']}]" if r.get("source") else ""
            lines.append(
                f"{name:<28}{_fmt(r['value'], '.3f'):>8}  (target {cmp} {r['target']}: {met}){source}"
            )
    return "\n".join(lines)
