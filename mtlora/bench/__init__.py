"""Training and inference benchmark of one configuration against its baselines (``mtlora bench``).

Measurement tooling, kept out of the model and training code: nothing in ``mtlora.models`` or
the training path imports it.  For the configured architecture :func:`run_bench` builds variants
(:mod:`~mtlora.bench.variants`: the config as is, full fine-tuning, decoders only, full or
selective recomputation, the config's network trained in full, without its task streams, and a
frozen encoder that gradients still cross) and measures them on one device with synthetic inputs:

* **counted** (:mod:`~mtlora.bench.counting`, fake tensors, any device, any size): FLOPs per
  image, activations saved for backward and the exact peak tensor memory of a training step
  (:mod:`~mtlora.bench.memory`); ``count_only`` stops there.
* **timed** (:mod:`~mtlora.bench.timing`): images/s of forward + loss + backward + AdamW step,
  optionally under ``torch.compile``; inference eager, compiled and with the adapters merged.
* **host** (:mod:`~mtlora.bench.host`): the device's peak memory of the phase, its peak FLOP/s
  for MFU, host synchronisations of a training step.
* **report** (:mod:`~mtlora.bench.report`): target ratios and plain-text tables.
"""

from mtlora.bench.counting import count_variant
from mtlora.bench.host import device_name, device_peak_tflops, host_memory_kept, resolve_precision
from mtlora.bench.memory import (
    MaskDropout,
    TensorMemoryMeter,
    ValueReadCounter,
    count_dropout_as_cuda,
    fake_model,
    new_fake_mode,
    storage_bytes,
    to_fake,
)
from mtlora.bench.report import TARGETS, format_report, summarise
from mtlora.bench.runner import best_of, run_bench
from mtlora.bench.variants import (
    BenchSettings,
    Precision,
    Variant,
    build_variant,
    make_train_step,
    synthetic_batch,
)

__all__ = [
    "TARGETS",
    "BenchSettings",
    "MaskDropout",
    "Precision",
    "TensorMemoryMeter",
    "ValueReadCounter",
    "Variant",
    "best_of",
    "build_variant",
    "count_dropout_as_cuda",
    "count_variant",
    "device_name",
    "device_peak_tflops",
    "fake_model",
    "format_report",
    "host_memory_kept",
    "make_train_step",
    "new_fake_mode",
    "resolve_precision",
    "run_bench",
    "storage_bytes",
    "summarise",
    "synthetic_batch",
    "to_fake",
]
