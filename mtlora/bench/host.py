"""The machine a bench runs on: device name and peak, precision, memory meters, the host allocator,
the git commit, synchronisations."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch

from mtlora.bench.variants import Precision

# Dense per-GPU peaks (TFLOP/s) where Lightning's table has none or gives another figure: it lists
# the H200's bf16 peak with structured sparsity and the H100 NVL as a pair of GPUs.
_DENSE_PEAK_FIXES: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.0, "fp32": 60.0},
}
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


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
    return cpu_model()


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (Linux), else the platform's processor string."""
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
    """Peak dense TFLOP/s of ``device`` at ``precision`` and where the number came from.

    From Lightning's ``get_available_flops`` (fp32 means TF32 there when matmul precision allows
    it), corrected to dense per-GPU figures where it has none; None for CPUs and unknown GPUs.
    """
    if override is not None:
        return float(override), "user (--peak_tflops)"
    if device.type != "cuda":
        return None, "unknown peak (pass --peak_tflops)"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in _DENSE_PEAK_FIXES.items():
        if fragment in name:
            return peaks[precision], f"dense peak of {fragment} {precision}"
    from lightning.fabric.utilities.throughput import get_available_flops  # Lightning: only when asked

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown device is reported in the source string
        flops = get_available_flops(device, _DTYPES[precision])
    if flops is None:
        return None, f"unknown peak for {name!r} {precision} (pass --peak_tflops)"
    return flops / 1e12, f"lightning get_available_flops {precision}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_commit() -> dict[str, str | bool | None]:
    """Short commit of the library's checkout and whether the working tree differs from it."""
    root = Path(__file__).resolve().parents[2]

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
    """Peak memory of one phase: CUDA allocator peak, or peak RSS growth of the process on CPU.

    On CPU: the growth of the peak resident set (``VmHWM``, reset through
    ``/proc/self/clear_refs``) over the resident set before the variant was built; an
    approximation that also counts allocator caching; None where ``/proc`` lacks it.
    """

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
def host_memory_kept(device: torch.device) -> Iterator[str | None]:
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
